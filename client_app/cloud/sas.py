"""Shared access policies, SAS tokens and connection strings, as Azure IoT Hub, DPS and Event Hubs use them.

Token format (Azure docs "Control access to IoT Hub by using shared access signatures", and
azure-iot-sdk-node `common/core/src/shared_access_signature.ts`):
    SharedAccessSignature sr={URL-encoded resource}&sig={URL-encoded base64 HMAC}&se={expiry}&skn={policy}
The HMAC-SHA256 key is the base64-decoded policy key; the signed text is the *encoded* resource, a newline
and the expiry. Verification signs the `sr` value exactly as the token carries it, so any encoding a signer
chose checks out as long as it signed what it sent. Pure functions and stdlib only: the service API, the
AMQP endpoint, the operator client and the tests all use this one module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote

SAS_PREFIX = "SharedAccessSignature "


class SasError(Exception):
    """A token that does not grant the request; `reason` is one plain sentence for the 401 body."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AccessPolicy:
    name: str
    primary_key: str  # base64, 32 random bytes as Azure generates them
    secondary_key: str
    rights: frozenset[str]

    @classmethod
    def generate(cls, name: str, rights: Iterable[str]) -> AccessPolicy:
        return cls(name, new_key(), new_key(), frozenset(rights))


# IoT Hub's built-in shared access policies and their permissions (Azure docs, "IoT Hub permissions").
HUB_POLICIES: Mapping[str, frozenset[str]] = {
    "iothubowner": frozenset({"RegistryRead", "RegistryWrite", "ServiceConnect", "DeviceConnect"}),
    "service": frozenset({"ServiceConnect"}),
    "device": frozenset({"DeviceConnect"}),
    "registryRead": frozenset({"RegistryRead"}),
    "registryReadWrite": frozenset({"RegistryRead", "RegistryWrite"}),
}
# DPS's built-in policies (Azure docs, "Control access to Azure IoT Hub Device Provisioning Service").
DPS_POLICIES: Mapping[str, frozenset[str]] = {
    "provisioningserviceowner": frozenset(
        {
            "ServiceConfig",
            "DeviceConnect",
            "EnrollmentRead",
            "EnrollmentWrite",
            "RegistrationStatusRead",
            "RegistrationStatusWrite",
        }
    ),
    "enrollmentread": frozenset({"EnrollmentRead", "RegistrationStatusRead"}),
}


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _sign(key_b64: str, encoded_resource: str, expiry: str, *, raw_key: bool = False) -> str:
    """IoT Hub signs with the base64-decoded key; Service Bus and Event Hubs clients (`raw_key`) with the key
    text's UTF-8 bytes (azure-eventhub `_pyamqp/utils.generate_sas_token`, @azure/core-amqp)."""
    try:
        key = key_b64.encode() if raw_key else base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SasError("The shared access key is not valid base64.") from exc
    digest = hmac.new(key, f"{encoded_resource}\n{expiry}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def generate_token(resource: str, key_b64: str, policy: str | None = None, ttl: float = 3600) -> str:
    """A SAS token for `resource` (e.g. the hub host name), valid for `ttl` seconds."""
    encoded = quote(resource, safe="")
    expiry = str(int(time.time() + ttl))
    parts = [f"sr={encoded}", f"sig={quote(_sign(key_b64, encoded, expiry), safe='')}", f"se={expiry}"]
    if policy:
        parts.append(f"skn={policy}")
    return SAS_PREFIX + "&".join(parts)


@dataclass(frozen=True)
class SasToken:
    encoded_resource: str  # as the token carries it (what was signed)
    signature: str
    expiry: str
    key_name: str | None

    @property
    def resource(self) -> str:
        return unquote(self.encoded_resource)


def parse_token(token: str) -> SasToken:
    if not token.startswith(SAS_PREFIX):
        raise SasError("The authorization header is not a SharedAccessSignature.")
    fields: dict[str, str] = {}
    for part in token[len(SAS_PREFIX) :].split("&"):
        name, sep, value = part.partition("=")
        if not sep or name in fields:
            raise SasError("The SharedAccessSignature is malformed.")
        fields[name] = value
    if not {"sr", "sig", "se"} <= fields.keys() or not (fields["se"].isascii() and fields["se"].isdigit()):
        raise SasError("The SharedAccessSignature must carry sr, sig and a numeric se.")
    return SasToken(fields["sr"], unquote(fields["sig"]), fields["se"], fields.get("skn"))


def verify_token(
    token: str,
    policies: Mapping[str, AccessPolicy],
    audience: str,
    right: str,
    now: float | None = None,
    *,
    event_hubs_keys: bool = False,
) -> AccessPolicy:
    """The policy that grants `right` on `audience` through `token`; raises SasError otherwise.

    The token's resource must be the audience or a path prefix of it (a token for `host` is good for
    `host/devices/x`), compared case-insensitively as Azure does with host names."""
    parsed = parse_token(token)
    if parsed.key_name is None or parsed.key_name not in policies:
        raise SasError("The SharedAccessSignature names no known shared access policy.")
    policy = policies[parsed.key_name]
    presented = parsed.signature.encode()  # bytes: compare_digest raises on non-ASCII str
    styles = (False, True) if event_hubs_keys else (False,)  # also the Event Hubs signing (the AMQP endpoint)
    if not any(
        hmac.compare_digest(
            _sign(key, parsed.encoded_resource, parsed.expiry, raw_key=raw).encode(), presented
        )
        for key in (policy.primary_key, policy.secondary_key)
        for raw in styles
    ):
        raise SasError("The SharedAccessSignature signature is not valid.")
    if int(parsed.expiry) <= (time.time() if now is None else now):
        raise SasError("The SharedAccessSignature has expired.")
    if not _covers(parsed.resource, audience):
        raise SasError(f"The SharedAccessSignature is not for {audience}.")
    if right not in policy.rights:
        raise SasError(f"The shared access policy {policy.name} lacks the {right} permission.")
    return policy


def _covers(resource: str, audience: str) -> bool:
    scheme_free = [value.split("://", 1)[-1].rstrip("/").lower() for value in (resource, audience)]
    granted, wanted = scheme_free
    return wanted == granted or wanted.startswith(granted + "/")


def parse_connection_string(text: str) -> dict[str, str]:
    """`Key=value;Key=value` into a dict; each part splits once on '=' (keys hold base64 '=' padding)."""
    fields: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, value = part.partition("=")
        if not sep or not name:
            raise ValueError(f"connection string part {name!r} has no value")
        fields[name] = value
    return fields


def connection_string(host: str, policy: AccessPolicy) -> str:
    """The connection string Azure's portal shows for a hub or DPS policy."""
    return f"HostName={host};SharedAccessKeyName={policy.name};SharedAccessKey={policy.primary_key}"
