"""Claims-based security as Azure's AMQP endpoints do it: SASL without credentials, then a CBS put-token.

Every service SDK we serve authenticates this way: azure-iot-hub (uamqp `JWTTokenAuth`, token type
`servicebus.windows.net:sastoken`, audience `https://{host}`), azure-iothub for Node
(`common-amqp/amqp_cbs.ts`, audience = the token's `sr`), azure-eventhub (`_pyamqp` `JWTTokenAuth`, audience
`sb://{host}/{entity}`) and @azure/event-hubs (`cbsSession.ts`). A put-token request carries application
properties `operation` (`put-token`), `type` and `name` (the audience) and the token as its body; the answer
carries `status-code` (an AMQP int, which uamqp insists on) and `status-description`, correlated by the
request's message id. Tokens are checked as the REST API checks them (client_app.cloud.sas): signature,
expiry, audience, right.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from client_app.cloud.sas import AccessPolicy, SasError, parse_token, verify_token

SERVICE_RIGHT = "ServiceConnect"
TOKEN_TYPES = frozenset({"servicebus.windows.net:sastoken", "azure-devices.net:sastoken"})

PolicySource = Callable[[], Mapping[str, AccessPolicy]]  # the seam to wherever the policies are kept


def split_address(address: str) -> tuple[str | None, str]:
    """`amqps://host/a/b`, `/a/b` or `a/b` → (host or None, `a/b`), host lower-cased."""
    if "://" in address:
        parts = urlsplit(address)
        return (parts.hostname or "").lower(), parts.path.strip("/")
    return None, address.strip("/")


@dataclass
class Grant:
    host: str
    path: str  # "" for a token on the whole host
    expiry: float


@dataclass
class ConnectionAuth:
    """The tokens one AMQP connection has put; links are allowed on what an unexpired one covers."""

    grants: list[Grant] = field(default_factory=list)

    def covers(self, path: str, now: float | None = None) -> bool:
        """Entity paths compare case-insensitively, as Azure's do (azure-eventhub lower-cases part of its
        token audience: `hub/consumergroups/$Default`)."""
        moment = time.time() if now is None else now
        wanted = path.lower()
        return any(
            g.expiry > moment and (not g.path or wanted == g.path or wanted.startswith(g.path + "/"))
            for g in self.grants
        )


class TokenChecker:
    """Checks put-token requests against the hub's policies and the host names this endpoint answers to."""

    def __init__(self, policies: PolicySource, hosts: Iterable[str]) -> None:
        self._policies = policies
        self.hosts = {h.lower() for h in hosts}

    def put_token(self, auth: ConnectionAuth, token_type: str | None, audience: str | None, token: object
                  ) -> tuple[int, str]:  # fmt: skip
        """(status-code, status-description) of a put-token; a good token becomes a grant on `auth`."""
        if token_type not in TOKEN_TYPES:
            return 400, f"The token type {token_type!r} is not supported."
        if not isinstance(token, str) or not audience:
            return 400, "A put-token request needs a name (the audience) and the token as a string body."
        host, path = split_address(audience if "://" in audience else f"sb://{audience}")
        if host not in self.hosts:
            return 404, f"The audience {audience!r} is not an entity of this hub."
        try:
            verify_token(
                token, self._policies(), f"{host}/{path}".rstrip("/"), SERVICE_RIGHT, event_hubs_keys=True
            )
            sr_host, sr_path = split_address(_with_scheme(parse_token(token).resource))
        except SasError as exc:
            return 401, exc.reason
        auth.grants.append(Grant(sr_host or host, sr_path.lower(), float(parse_token(token).expiry)))
        return 200, "OK"

    def verify(self, token: object, path: str) -> str | None:
        """For requests that carry their own token (`$management`'s `security_token`): None if it grants
        `path` on one of our hosts, else the reason."""
        if not isinstance(token, str):
            return "The request carries no security token."
        try:
            host, _ = split_address(_with_scheme(parse_token(token).resource))
            verify_token(token, self._policies(), f"{host}/{path}", SERVICE_RIGHT, event_hubs_keys=True)
        except SasError as exc:
            return exc.reason
        return None if host in self.hosts else "The security token is not for this hub."


def _with_scheme(resource: str) -> str:
    return resource if "://" in resource else f"sb://{resource}"
