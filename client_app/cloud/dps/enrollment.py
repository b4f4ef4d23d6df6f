"""Enrollment groups, individual enrollments, registration records and X.509 chain matching (DPS rules)."""

from __future__ import annotations

import functools
import json
import logging
import re
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    VerificationError,
)
from cryptography.x509.verification import (
    Store as TrustStore,
)

from client_app.cloud.dps.allocation import ALLOCATION_POLICIES, CustomAllocation
from client_app.cloud.dps.certificates import CertificateStore, certificate_info, parse_enrollment_certificate
from client_app.cloud.dps.identity_policy import IdentityPolicy, client_auth_refusal, identity_refusal
from client_app.cloud.errors import CloudError, bad_request, not_found
from client_app.cloud.hub.limits import check_initial_twin
from client_app.cloud.store import Store, dumps, utc_now
from client_app.pki import (
    PkiError,
    certificate_to_pem,
    key_id,
    load_certificates,
    sha256_thumbprint,
    validate_registration_id,
)

log = logging.getLogger("client_app.cloud.dps.enrollment")

_GROUP_ID = re.compile(r"^[A-Za-z0-9._:-]{0,127}[A-Za-z0-9-]$")
MAX_GROUPS = 100


def _status(enabled: bool) -> str:
    return "enabled" if enabled else "disabled"


@dataclass(frozen=True)
class GroupOptions:
    """Azure's allocationPolicy / customAllocationDefinition, and our identityPolicy (issue 13)."""

    identity: IdentityPolicy = field(default_factory=IdentityPolicy)
    allocation_policy: str = "hashed"
    custom_allocation: CustomAllocation | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "allocationPolicy": self.allocation_policy,
            "identityPolicy": self.identity.to_json(),
        }
        if self.custom_allocation is not None:
            body["customAllocationDefinition"] = self.custom_allocation.to_json()
        return body

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> GroupOptions:
        """From a group body's fields (absent = default); validates as DPS does at PUT."""
        policy = raw.get("allocationPolicy") or "hashed"
        if policy not in ALLOCATION_POLICIES:
            raise bad_request(f"allocationPolicy must be one of {', '.join(ALLOCATION_POLICIES)}", 400001)
        definition = raw.get("customAllocationDefinition")
        if policy == "custom" and definition is None:
            raise bad_request('allocationPolicy "custom" needs a customAllocationDefinition', 400001)
        return cls(
            IdentityPolicy.from_json(raw.get("identityPolicy")),
            policy,
            CustomAllocation.from_json(definition) if definition is not None else None,
        )


SLOTS = ("primary", "secondary")


@dataclass(frozen=True)
class EnrollmentGroup:
    group_id: str
    ca_name: str  # caReferences.primary; '' for a group attested by signingCertificates
    enabled: bool
    initial_twin: dict[str, Any]
    etag: str
    created: str
    updated: str
    options: GroupOptions = field(default_factory=GroupOptions)
    signing: tuple[x509.Certificate, ...] = ()  # signingCertificates: primary, then secondary if any

    def attestation(self) -> dict[str, Any]:
        """Azure's X509Attestation. A signing certificate comes back as its `info` only: DPS computes the
        X509CertificateInfo and returns it, not the PEM (service.json 2021-10-01 X509CertificateWithInfo;
        the SDKs' X509CertificateWithInfo docs: "After send an X509 certificate to the provisioning service,
        it will return the X509CertificateInfo")."""
        if self.signing:
            return {"type": "x509", "x509": {"signingCertificates": _infos(self.signing)}}
        return {"type": "x509", "x509": {"caReferences": {"primary": self.ca_name}}}

    def to_json(self) -> dict[str, Any]:
        return {
            **self.options.to_json(),
            "enrollmentGroupId": self.group_id,
            "attestation": self.attestation(),
            "provisioningStatus": _status(self.enabled),
            "reprovisionPolicy": {"updateHubAssignment": True, "migrateDeviceData": True},
            "capabilities": {"iotEdge": False},
            "initialTwin": self.initial_twin,
            "etag": self.etag,
            "createdDateTimeUtc": self.created,
            "lastUpdatedDateTimeUtc": self.updated,
        }


def _infos(certificates: Sequence[x509.Certificate]) -> dict[str, Any]:
    """Azure's X509Certificates as DPS answers it: each slot's X509CertificateInfo, never the PEM."""
    return {slot: {"info": certificate_info(cert)} for slot, cert in zip(SLOTS, certificates, strict=False)}


def _load_pems(text: str | None) -> tuple[x509.Certificate, ...]:
    return _parsed_pems(text) if text else ()


@functools.lru_cache(maxsize=1024)
def _parsed_pems(text: str) -> tuple[x509.Certificate, ...]:
    """Parsed once: every registration reads every group (up to 100) to find the one closest to its leaf."""
    return tuple(load_certificates(pem.encode())[0] for pem in json.loads(text))


_stored_thumbprint = functools.lru_cache(maxsize=1024)(sha256_thumbprint)  # of the cached stored certificates


def _pems(certificates: Sequence[x509.Certificate]) -> str:
    return dumps([certificate_to_pem(cert).decode() for cert in certificates])


@dataclass(frozen=True)
class IndividualEnrollment:
    registration_id: str
    enabled: bool
    etag: str
    created: str
    updated: str
    client: tuple[x509.Certificate, ...] = ()  # clientCertificates: the device's leaf, primary then secondary

    def to_json(self) -> dict[str, Any]:
        x509_attestation = {"x509": {"clientCertificates": _infos(self.client)}} if self.client else {}
        return {
            "registrationId": self.registration_id,
            "attestation": {"type": "x509", **x509_attestation},
            "provisioningStatus": _status(self.enabled),
            "etag": self.etag,
            "createdDateTimeUtc": self.created,
            "lastUpdatedDateTimeUtc": self.updated,
        }


@dataclass(frozen=True)
class Registration:
    registration_id: str
    device_id: str
    group_id: str | None
    assigned_hub: str
    status: str
    substatus: str
    thumbprint: str
    operation_id: str
    etag: str
    created: str
    updated: str
    x509_result: str | None = None  # the device's X509RegistrationResult (JSON); None before schema 5

    def to_json(self) -> dict[str, Any]:
        """DeviceRegistrationState (service.json 2021-10-01), `x509` as the device received it."""
        if self.x509_result is not None:
            x509_info: dict[str, Any] = json.loads(self.x509_result)
        else:  # recorded before the cloud kept the whole result: the thumbprint is all there is
            x509_info = {"certificateInfo": {"sha256Thumbprint": self.thumbprint}}
            if self.group_id:
                x509_info["enrollmentGroupId"] = self.group_id
        return {
            "x509": x509_info,
            "registrationId": self.registration_id,
            "createdDateTimeUtc": self.created,
            "assignedHub": self.assigned_hub,
            "deviceId": self.device_id,
            "status": self.status,
            "substatus": self.substatus,
            "lastUpdatedDateTimeUtc": self.updated,
            "etag": self.etag,
        }


@dataclass(frozen=True)
class Match:
    """Outcome of matching: who decided (individual enrollment or a group) and whether it allows."""

    registration_id: str
    leaf: x509.Certificate
    group_id: str | None
    enabled: bool
    signing_certificate: x509.Certificate | None = None  # the group's signingCertificates entry that matched

    @property
    def thumbprint(self) -> str:
        return sha256_thumbprint(self.leaf)

    def x509_result(self) -> dict[str, Any]:
        """The device's X509RegistrationResult (device.json 2021-10-01): certificateInfo of its leaf; for a
        group its enrollmentGroupId, and signingCertificateInfo when it matched by a signing certificate."""
        result: dict[str, Any] = {"certificateInfo": certificate_info(self.leaf)}
        if self.group_id:
            result["enrollmentGroupId"] = self.group_id
        if self.signing_certificate is not None:
            result["signingCertificateInfo"] = certificate_info(self.signing_certificate)
        return result


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def unauthorized(message: str) -> CloudError:
    return CloudError(401, 401002, message)


def _verifier(anchors: list[x509.Certificate]) -> Any:
    # Web-PKI defaults, except that device leaves need no SAN (DPS leaves carry only a CN).
    ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    return (
        PolicyBuilder()
        .store(TrustStore(anchors))
        .time(datetime.now(UTC))
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy)
        .build_client_verifier()
    )


class Enrollments:
    def __init__(self, store: Store, certificates: CertificateStore) -> None:
        self._store = store
        self._certificates = certificates

    # ---- enrollment groups -----------------------------------------------------------------------
    @staticmethod
    def _group(row: sqlite3.Row) -> EnrollmentGroup:
        options = GroupOptions.from_json(json.loads(row["options"])) if row["options"] else GroupOptions()
        return EnrollmentGroup(
            row["group_id"], row["ca_name"], bool(row["enabled"]), json.loads(row["initial_twin"]),
            row["etag"], row["created"], row["updated"], options, _load_pems(row["signing"]),
        )  # fmt: skip

    _GROUPS = (
        "SELECT g.*, o.options, s.certificates AS signing FROM enrollment_groups g"
        " LEFT JOIN enrollment_group_options o USING (group_id)"
        " LEFT JOIN enrollment_group_signing s USING (group_id)"
    )

    def groups(self) -> list[EnrollmentGroup]:
        return [self._group(r) for r in self._store.all(f"{self._GROUPS} ORDER BY g.group_id")]

    def group(self, group_id: str) -> EnrollmentGroup:
        row = self._store.one(f"{self._GROUPS} WHERE g.group_id=?", (group_id,))
        if row is None:
            raise not_found("enrollment group", group_id, 404201)
        return self._group(row)

    def put_group(
        self,
        group_id: str,
        ca_name: str,
        *,
        enabled: bool = True,
        initial_twin: dict[str, Any] | None = None,
        if_match: str | None = None,
        options: GroupOptions | None = None,
        create_only: bool = False,
        signing: Sequence[x509.Certificate] = (),
    ) -> EnrollmentGroup:
        """Create or replace a group on a verified CA (`ca_name`, caReferences) or on its own `signing`
        certificates (signingCertificates, ca_name ''); with `create_only` an existing ID is refused."""
        if not _GROUP_ID.match(group_id):
            raise bad_request(
                f"enrollment group id '{group_id}': up to 128 of A-Z a-z 0-9 - . _ :,"
                " ending alphanumeric or -",
                400001,
            )
        if signing:
            self._check_signing_unique(group_id, signing)
        else:
            self._check_ca_reference(group_id, ca_name)
        existing = self._store.one("SELECT * FROM enrollment_groups WHERE group_id=?", (group_id,))
        if existing is not None and create_only:
            raise CloudError(409, 409001, f"enrollment group {existing['group_id']!r} already exists")
        if existing is not None and if_match not in (None, "*", existing["etag"]):
            raise CloudError(412, 412001, f"enrollment group '{group_id}': etag mismatch")
        if existing is None and len(self.groups()) >= MAX_GROUPS:
            raise CloudError(403, 403002, f"at most {MAX_GROUPS} enrollment groups")
        twin = initial_twin if initial_twin is not None else {}
        check_initial_twin(twin)
        now = utc_now()
        stored_id = existing["group_id"] if existing else group_id
        with self._store.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO enrollment_groups VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    stored_id, ca_name, int(enabled), dumps(twin),
                    secrets.token_hex(8), existing["created"] if existing else now, now,
                ),
            )  # fmt: skip
            db.execute(
                "INSERT OR REPLACE INTO enrollment_group_options VALUES (?, ?)",
                (stored_id, dumps((options or GroupOptions()).to_json())),
            )
            db.execute("DELETE FROM enrollment_group_signing WHERE group_id=?", (stored_id,))
            if signing:
                db.execute("INSERT INTO enrollment_group_signing VALUES (?, ?)", (stored_id, _pems(signing)))
        backing = f"signing certificate {signing[0].subject.rfc4514_string()}" if signing else f"CA {ca_name}"
        log.info("enrollment group %s -> %s (%s)", group_id, backing, _status(enabled))
        return self.group(group_id)

    def _check_ca_reference(self, group_id: str, ca_name: str) -> None:
        ca = self._certificates.get(ca_name)
        if not ca.is_verified:
            raise bad_request(
                f"certificate '{ca_name}' is not verified; only verified CAs can back a group", 400007
            )
        other = self._store.one(
            "SELECT group_id FROM enrollment_groups WHERE ca_name=? AND group_id<>?", (ca_name, group_id)
        )
        if other is not None:
            raise CloudError(
                409, 409001, f"certificate '{ca_name}' already backs enrollment group '{other[0]}'"
            )
        others = (g for g in self.groups() if g.signing and g.group_id.lower() != group_id.lower())
        holder = next((g for g in others if ca.sha256 in self._entry_thumbprints(g)), None)
        if holder is not None:  # the same certificate as another group's signing certificate
            raise CloudError(
                409, 409001, f"certificate '{ca_name}' already backs enrollment group '{holder.group_id}'"
            )

    def _check_signing_unique(self, group_id: str, signing: Sequence[x509.Certificate]) -> None:
        """DPS: "A certificate can be specified in only one enrollment entry in your DPS instance" (Azure
        docs how-to-roll-certificates; dps-pki-rules.md §4.1): no other group may hold it, as a signing
        certificate or through its CA reference."""
        thumbprints = [sha256_thumbprint(cert) for cert in signing]
        for group in self.groups():
            if group.group_id.lower() == group_id.lower():
                continue
            if set(thumbprints) & set(self._entry_thumbprints(group)):
                raise CloudError(
                    409, 409001, f"that certificate already backs enrollment group '{group.group_id}'"
                )

    def _entry_thumbprints(self, group: EnrollmentGroup, cas: dict[str, str] | None = None) -> dict[str, Any]:
        """SHA-256 thumbprint -> the group's certificate entry (a signing certificate, or None for its CA)."""
        if group.signing:
            return {_stored_thumbprint(cert): cert for cert in group.signing}
        if cas is None:
            cas = {c.name: c.sha256 for c in self._certificates.list()}
        return {cas[group.ca_name]: None} if group.ca_name in cas else {}

    def set_group_enabled(self, group_id: str, enabled: bool) -> EnrollmentGroup:
        current = self.group(group_id)
        return self.put_group(
            current.group_id,
            current.ca_name,
            enabled=enabled,
            initial_twin=current.initial_twin,
            options=current.options,
            signing=current.signing,
        )

    def delete_group(self, group_id: str) -> None:
        self.group(group_id)
        # Registration records and hub devices stay, as in DPS.
        with self._store.transaction() as db:
            db.execute("DELETE FROM enrollment_groups WHERE group_id=?", (group_id,))
            db.execute("DELETE FROM enrollment_group_options WHERE group_id=?", (group_id,))
            db.execute("DELETE FROM enrollment_group_signing WHERE group_id=?", (group_id,))

    # ---- individual enrollments ------------------------------------------------------------------
    @staticmethod
    def _enrollment(row: sqlite3.Row) -> IndividualEnrollment:
        return IndividualEnrollment(
            row["registration_id"], bool(row["enabled"]), row["etag"], row["created"], row["updated"],
            _load_pems(row["client"]),
        )  # fmt: skip

    _ENROLLMENTS = (
        "SELECT e.*, c.certificates AS client FROM enrollments e"
        " LEFT JOIN enrollment_client_certificates c USING (registration_id)"
    )

    def enrollments(self) -> list[IndividualEnrollment]:
        rows = self._store.all(f"{self._ENROLLMENTS} ORDER BY e.registration_id")
        return [self._enrollment(r) for r in rows]

    def enrollment(self, registration_id: str) -> IndividualEnrollment:
        found = self.find_enrollment(registration_id)
        if found is None:
            raise not_found("enrollment", registration_id, 404201)
        return found

    def find_enrollment(self, registration_id: str) -> IndividualEnrollment | None:
        row = self._store.one(f"{self._ENROLLMENTS} WHERE e.registration_id=?", (registration_id,))
        return self._enrollment(row) if row else None

    def put_enrollment(
        self, registration_id: str, *, enabled: bool, client: Sequence[x509.Certificate] = ()
    ) -> IndividualEnrollment:
        """An individual X.509 enrollment keyed by registration ID: disabled, it blocks one device of a group.
        With `client` (clientCertificates) only that leaf may register as the ID; its CN must be the ID (the
        registration ID of an X.509 enrollment is its certificate's CN, Azure docs concepts-service.md)."""
        registration_id = _checked_registration_id(registration_id)
        for cert in client:
            if common_name(cert).lower() != registration_id.lower():
                raise bad_request(
                    f"clientCertificates: CN '{common_name(cert)}' is not the registration ID", 400005
                )
        existing = self._store.one(
            "SELECT created FROM enrollments WHERE registration_id=?", (registration_id,)
        )
        now = utc_now()
        created = existing["created"] if existing else now
        with self._store.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO enrollments VALUES (?, ?, ?, ?, ?)",
                (registration_id, int(enabled), secrets.token_hex(8), created, now),
            )
            db.execute(
                "DELETE FROM enrollment_client_certificates WHERE registration_id=?", (registration_id,)
            )
            if client:
                db.execute(
                    "INSERT INTO enrollment_client_certificates VALUES (?, ?)",
                    (registration_id, _pems(client)),
                )
        log.info("individual enrollment %s (%s)", registration_id, _status(enabled))
        return self.enrollment(registration_id)

    def delete_enrollment(self, registration_id: str) -> None:
        self.enrollment(registration_id)
        with self._store.transaction() as db:
            db.execute("DELETE FROM enrollments WHERE registration_id=?", (registration_id,))
            db.execute(
                "DELETE FROM enrollment_client_certificates WHERE registration_id=?", (registration_id,)
            )

    # ---- registration records --------------------------------------------------------------------
    @staticmethod
    def _registration(row: sqlite3.Row) -> Registration:
        return Registration(*row)  # columns in field order

    _REGISTRATIONS = (
        "SELECT r.*, x.result FROM registrations r"
        " LEFT JOIN registration_x509 x ON x.registration_id = r.registration_id"
    )

    def registration(self, registration_id: str) -> Registration | None:
        row = self._store.one(f"{self._REGISTRATIONS} WHERE r.registration_id=?", (registration_id,))
        return self._registration(row) if row else None

    def registrations(self, group_id: str | None = None) -> list[Registration]:
        if group_id is None:
            rows = self._store.all(f"{self._REGISTRATIONS} ORDER BY r.registration_id")
        else:
            rows = self._store.all(
                f"{self._REGISTRATIONS} WHERE r.group_id=? COLLATE NOCASE ORDER BY r.registration_id",
                (group_id,),
            )
        return [self._registration(r) for r in rows]

    def delete_registration(self, registration_id: str) -> None:
        if self.registration(registration_id) is None:
            raise not_found("registration", registration_id, 404202)
        # Forgetting the record forgets the pinned key too: the operator's way to let an ID re-key.
        with self._store.transaction() as db:
            for table in ("registrations", "registration_keys", "registration_x509"):
                db.execute(f"DELETE FROM {table} WHERE registration_id=?", (registration_id,))

    def device_id_for(self, registration_id: str) -> str:
        """Registration IDs are case-insensitive, hub device IDs are not: a device that registers again with
        other letter case keeps the hub device its first registration created."""
        previous = self.registration(registration_id)
        return previous.device_id if previous else registration_id

    def record_assignment(
        self, match: Match, device_id: str, assigned_hub: str, operation_id: str
    ) -> Registration:
        previous = self.registration(match.registration_id)
        now = utc_now()
        if previous is None:
            substatus = "initialAssignment"
        elif previous.assigned_hub == assigned_hub:
            substatus = "reprovisionedToInitialAssignment"
        else:
            substatus = "deviceDataMigrated"
        with self._store.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO registrations VALUES (?, ?, ?, ?, 'assigned', ?, ?, ?, ?, ?, ?)",
                (
                    match.registration_id, device_id, match.group_id, assigned_hub, substatus,
                    match.thumbprint, operation_id, secrets.token_hex(8),
                    previous.created if previous else now, now,
                ),
            )  # fmt: skip
            db.execute(
                "INSERT OR REPLACE INTO registration_keys VALUES (?, ?)",
                (match.registration_id, key_id(match.leaf.public_key())),
            )
            db.execute(
                "INSERT OR REPLACE INTO registration_x509 VALUES (?, ?)",
                (match.registration_id, json.dumps(match.x509_result())),
            )
        registration = self.registration(match.registration_id)
        assert registration is not None
        return registration

    # ---- identity checks (issue 13) -------------------------------------------------------------
    def pinned_key(self, registration_id: str, leaf: x509.Certificate) -> str | None:
        """key_id the registration ID registered with last (None: never registered, or unknown). A record
        from before keys were pinned knows only its leaf's thumbprint: the same leaf means the same key."""
        row = self._store.one(
            "SELECT key_id FROM registration_keys WHERE registration_id=?", (registration_id,)
        )
        if row is not None:
            return str(row["key_id"])
        previous = self.registration(registration_id)
        if previous is not None and previous.thumbprint == sha256_thumbprint(leaf):
            return key_id(leaf.public_key())
        return None

    def _policy(self, group_id: str | None) -> IdentityPolicy:
        if group_id is None:
            return IdentityPolicy()  # individual enrollments: key pinning only
        try:
            return self.group(group_id).options.identity
        except CloudError:
            return IdentityPolicy()  # group deleted since: key pinning only

    def check_identity(self, match: Match) -> None:
        """At DPS registration: raise 401002 unless this leaf may act as the registration ID."""
        refusal = identity_refusal(
            self._policy(match.group_id),
            match.registration_id,
            match.leaf,
            self.pinned_key(match.registration_id, match.leaf),
        )
        if refusal is not None:
            raise unauthorized(refusal)

    def connect_refusal(self, device_id: str, chain: list[x509.Certificate]) -> str | None:
        """At hub CONNECT: the same rules for the device's registration (None = no objection)."""
        if not chain:
            return None  # the hub's thumbprint check refuses it
        refusal = client_auth_refusal(chain[0])
        if refusal is not None:
            return refusal
        # A group's device ID is its registration ID (first spelling, device_id_for): look up by the key.
        row = self._store.one(
            "SELECT registration_id, group_id FROM registrations WHERE registration_id=? AND device_id=?",
            (device_id, device_id),
        )
        if row is None:
            return None  # a device the operator created directly: thumbprint auth only, as IoT Hub
        registration_id = row["registration_id"]
        return identity_refusal(
            self._policy(row["group_id"]),
            registration_id,
            chain[0],
            self.pinned_key(registration_id, chain[0]),
        )

    # ---- attestation -----------------------------------------------------------------------------
    def attest(self, registration_id: str, chain: list[x509.Certificate]) -> Match:
        """Check the presented chain for this registration ID; find the deciding enrollment (DPS order)."""
        registration_id = _checked_registration_id(registration_id)
        if not chain:
            raise unauthorized("no client certificate presented")
        leaf = chain[0]
        if common_name(leaf).lower() != registration_id.lower():
            raise unauthorized(
                f"registration ID '{registration_id}' does not match certificate CN '{common_name(leaf)}'"
            )
        refusal = client_auth_refusal(leaf)
        if refusal is not None:
            raise unauthorized(refusal)
        groups = self.groups()
        path = self._verified_path(leaf, chain[1:], [c for g in groups for c in g.signing])
        individual = self.find_enrollment(registration_id)
        if individual is not None:  # an individual enrollment comes before any group
            if individual.client and sha256_thumbprint(leaf) not in {
                sha256_thumbprint(c) for c in individual.client
            }:
                raise unauthorized(f"the certificate is not the one enrolled for '{registration_id}'")
            return Match(registration_id, leaf, None, individual.enabled)
        cas = {c.name: c.sha256 for c in self._certificates.list()}
        entries = {t: (g, cert) for g in groups for t, cert in self._entry_thumbprints(g, cas).items()}
        for cert in path[1:]:  # leaf → root: the group on the certificate closest to the leaf decides
            entry = entries.get(sha256_thumbprint(cert))
            if entry is not None:
                group, signing = entry
                return Match(registration_id, leaf, group.group_id, group.enabled, signing)
        raise unauthorized("no enrollment group matches the certificate chain")

    def _verified_path(
        self, leaf: x509.Certificate, intermediates: list[x509.Certificate], signing: list[x509.Certificate]
    ) -> list[x509.Certificate]:
        """Validated chain leaf → verified anchor, extended above the anchor with known CAs up to a root."""
        anchors = [c.certificate for c in self._certificates.verified()]
        if not anchors:
            raise unauthorized("CA certificate not found. (no verified CA certificate)")
        try:
            path = list(_verifier(anchors).verify(leaf, intermediates).chain)
        except VerificationError as exc:
            if "candidates exhausted" in str(exc):
                raise unauthorized("CA certificate not found. (the chain reaches no verified CA)") from exc
            raise unauthorized(f"Invalid certificate: {exc}") from exc
        known = [c.certificate for c in self._certificates.list()] + intermediates + signing
        while path[-1].issuer != path[-1].subject:
            parent = next((c for c in known if _issued(path[-1], c) and c not in path), None)
            if parent is None:
                break
            path.append(parent)
        return path


def signing_certificates_from_json(entries: Any, existing: EnrollmentGroup | None) -> list[x509.Certificate]:
    """A group's `signingCertificates`: CA certificates (see certificates_from_json)."""
    return certificates_from_json(
        entries, existing.signing if existing else (), "signingCertificates", ca=True
    )


def client_certificates_from_json(
    entries: Any, existing: IndividualEnrollment | None
) -> list[x509.Certificate]:
    """An individual enrollment's `clientCertificates`: the device's leaf (see certificates_from_json)."""
    return certificates_from_json(
        entries, existing.client if existing else (), "clientCertificates", ca=False
    )


def certificates_from_json(
    entries: Any, held: Sequence[x509.Certificate], name: str, *, ca: bool
) -> list[x509.Certificate]:
    """Azure's X509Certificates `{primary: {certificate: PEM}, secondary: {...}}`. An entry with only the
    `info` a GET returned keeps the certificate already `held` in that slot (our choice: DPS never returns
    the PEM, so an enrollment read and PUT back unchanged, as the SDKs' update samples do, must still mean
    the same certificate)."""
    if not isinstance(entries, dict) or not isinstance(entries.get("primary"), dict):
        raise bad_request(f'{name}.primary must be {{"certificate": PEM}}', 400004)
    kept_by_slot = dict(zip(SLOTS, held, strict=False))
    certificates = []
    for slot in SLOTS:
        entry = entries.get(slot)
        if entry is None:
            continue
        what = f"{name}.{slot}"
        if not isinstance(entry, dict):
            raise bad_request(f"{what} must be an object", 400004)
        if entry.get("certificate") is not None:
            certificates.append(parse_enrollment_certificate(entry["certificate"], what, ca=ca))
            continue
        info = entry.get("info")
        thumbprint = info.get("sha256Thumbprint") if isinstance(info, dict) else None
        kept = kept_by_slot.get(slot)
        if kept is None or not isinstance(thumbprint, str) or thumbprint.upper() != sha256_thumbprint(kept):
            raise bad_request(f"{what}.certificate is required (a PEM certificate)", 400005)
        certificates.append(kept)
    return (
        certificates  # primary and secondary may be the same (azure-iot-deviceprovisioning's README sample)
    )


def _issued(child: x509.Certificate, parent: x509.Certificate) -> bool:
    if child.issuer != parent.subject:
        return False
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _checked_registration_id(registration_id: str) -> str:
    try:
        return validate_registration_id(registration_id)
    except PkiError as exc:
        raise CloudError(400, 400004, f"Invalid RegistrationId: {exc}") from exc
