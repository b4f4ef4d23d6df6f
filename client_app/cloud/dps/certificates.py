"""CA certificate store with DPS-style proof of possession (upload → verification code → verify)."""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from client_app.cloud.errors import CloudError, bad_request, not_found
from client_app.cloud.store import Store, utc_now
from client_app.pki import certificate_to_pem, load_certificates, sha1_thumbprint, sha256_thumbprint

log = logging.getLogger("client_app.cloud.dps.certificates")

# DPS certificate names: alphanumerics and - . _ (an ARM child resource name); like every ARM resource name
# it may not end with a period ("Naming rules and restrictions for Azure resources", resource-name-rules),
# which also rules out "." and "..", names no URL path can address.
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}(?<!\.)$")
MAX_CERTIFICATES = 25


@dataclass(frozen=True)
class CaCertificate:
    name: str
    certificate: x509.Certificate
    pem: str
    subject: str
    sha1: str
    sha256: str
    not_after: str
    is_verified: bool
    verification_code: str | None
    etag: str
    created: str
    updated: str

    def to_json(self, *, include_code: bool = False) -> dict[str, object]:
        properties: dict[str, object] = {
            "subject": self.subject,
            "expiry": self.not_after,
            "thumbprint": self.sha1,
            "sha256Thumbprint": self.sha256,
            "isVerified": self.is_verified,
            "certificate": self.pem,
            "created": self.created,
            "updated": self.updated,
        }
        if include_code:
            properties["verificationCode"] = self.verification_code
        return {"name": self.name, "etag": self.etag, "properties": properties}


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def parse_single_certificate(pem: str | bytes, what: str) -> x509.Certificate:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        certs = load_certificates(data)
    except Exception as exc:
        raise bad_request(f"{what}: not a PEM certificate ({exc})", 400005) from exc
    if len(certs) != 1:
        raise bad_request(f"{what}: expected exactly one certificate, got {len(certs)}", 400005)
    return certs[0]


_PEM_ARMOR = re.compile(r"-----(BEGIN|END) CERTIFICATE-----")


def parse_enrollment_certificate(text: object, what: str, *, ca: bool) -> x509.Certificate:
    """An enrollment's certificate entry (`signingCertificates`: a CA, `ca`; `clientCertificates`: a device's
    leaf): one certificate as PEM, as the one-line PEM the .NET SDK sends (`-----BEGIN CERTIFICATE-----` +
    base64 + `-----END CERTIFICATE-----`, X509CertificateWithInfo.cs), or as bare base64 DER ("PEM or CER",
    Node's interfaces.d.ts; the C SDK's service sample: "just the Base 64 encoding, or can include the
    -----BEGIN CERTIFICATE----- and -----END CERTIFICATE----- tags, either works"). Anything else is a 400."""
    if not isinstance(text, str) or not text.strip():
        raise bad_request(f"{what}: the certificate must be a PEM string", 400005)
    if len(_PEM_ARMOR.findall(text)) > 2:
        raise bad_request(f"{what}: expected exactly one certificate", 400005)
    try:
        der = base64.b64decode("".join(_PEM_ARMOR.sub("", text).split()), validate=True)
        cert = x509.load_der_x509_certificate(der)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"{what}: not a valid PEM certificate ({exc})", 400005) from None
    if ca and not _is_ca(cert):  # it must sign device certificates: a leaf never sits above one in a chain
        raise bad_request(f"{what}: not a CA certificate (basicConstraints CA:TRUE required)", 400005)
    if not ca and _is_ca(cert):  # DPS refuses CA:TRUE device certificates at registration anyway
        raise bad_request(f"{what}: a CA certificate cannot be a device's client certificate", 400005)
    return cert


def _display_name(name: x509.Name) -> str:
    """Most specific RDN first, ", "-separated: the subject/issuer form of DPS's X509CertificateInfo examples
    ("CN=ROOT_…, OU=Azure IoT, O=MSFT, C=US", azure-iot-sdk-csharp X509CertificateWithInfo.cs)."""
    return ", ".join(rdn.rfc4514_string() for rdn in reversed(name.rdns))


def certificate_info(cert: x509.Certificate) -> dict[str, object]:
    """DPS's X509CertificateInfo (service.json / device.json 2021-10-01, all eight fields required)."""
    return {
        "subjectName": _display_name(cert.subject),
        "sha1Thumbprint": sha1_thumbprint(cert),
        "sha256Thumbprint": sha256_thumbprint(cert),
        "issuerName": _display_name(cert.issuer),
        "notBeforeUtc": _utc(cert.not_valid_before_utc),
        "notAfterUtc": _utc(cert.not_valid_after_utc),
        "serialNumber": _serial(cert.serial_number),
        "version": cert.version.value + 1,  # v3 is stored as 2
    }


def _serial(number: int) -> str:
    """Upper-case hex of whole bytes, as .NET's X509Certificate2.SerialNumber (what DPS runs on) shows it."""
    text = f"{number:X}"
    return "0" * (len(text) % 2) + text


def _utc(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class CertificateStore:
    """Certificates are keyed by name; a change of trust material calls `on_change` (the TLS trust reload)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.on_change: Callable[[], None] = lambda: None  # set by the server: reload TLS trust

    def _row_to_ca(self, row: sqlite3.Row) -> CaCertificate:
        pem = row["pem"]
        return CaCertificate(
            name=row["name"],
            certificate=load_certificates(pem.encode())[0],
            pem=pem,
            subject=row["subject"],
            sha1=row["sha1"],
            sha256=row["sha256"],
            not_after=row["not_after"],
            is_verified=bool(row["is_verified"]),
            verification_code=row["verification_code"],
            etag=row["etag"],
            created=row["created"],
            updated=row["updated"],
        )

    def list(self) -> list[CaCertificate]:
        return [self._row_to_ca(r) for r in self._store.all("SELECT * FROM certificates ORDER BY name")]

    def get(self, name: str) -> CaCertificate:
        ca = self.find(name)
        if ca is None:
            raise not_found("certificate", name, 404001)
        return ca

    def find(self, name: str) -> CaCertificate | None:
        row = self._store.one("SELECT * FROM certificates WHERE name=?", (name,))
        return self._row_to_ca(row) if row else None

    def verified(self) -> list[CaCertificate]:
        return [c for c in self.list() if c.is_verified]

    def all_pem(self) -> str:
        return "".join(r["pem"] for r in self._store.all("SELECT pem FROM certificates ORDER BY name"))

    @staticmethod
    def _check_etag(current: CaCertificate, if_match: str | None) -> None:
        if if_match not in (None, "*", current.etag):
            raise CloudError(
                412, 412001, f"certificate '{current.name}': etag {if_match} does not match {current.etag}"
            )

    def upload(
        self, name: str, pem: str, *, is_verified: bool = False, if_match: str | None = None
    ) -> CaCertificate:
        """Create or replace a CA certificate; replacing resets verification (new key, new proof)."""
        if not _NAME.match(name):
            raise bad_request(
                f"certificate name {name!r}: 1-128 of letters, digits, - . _; no '.' at either end",
                400001,
            )
        cert = parse_single_certificate(pem, f"certificate '{name}'")
        if not _is_ca(cert):
            raise bad_request(
                f"certificate '{name}' is not a CA certificate (basicConstraints CA:TRUE required)", 400005
            )
        existing = self.find(name)
        if existing is not None:
            self._check_etag(existing, if_match)
        elif len(self.list()) >= MAX_CERTIFICATES:
            raise CloudError(403, 403002, f"at most {MAX_CERTIFICATES} CA certificates can be stored")
        now = utc_now()
        self._store.execute(
            "INSERT OR REPLACE INTO certificates VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)",
            (
                name,
                certificate_to_pem(cert).decode(),
                cert.subject.rfc4514_string(),
                sha1_thumbprint(cert),
                sha256_thumbprint(cert),
                cert.not_valid_after_utc.isoformat().replace("+00:00", "Z"),
                int(is_verified),
                _new_etag(),
                existing.created if existing else now,
                now,
            ),
        )
        log.info(
            "certificate %s uploaded (%s, verified=%s)", name, cert.subject.rfc4514_string(), is_verified
        )
        self.on_change()
        return self.get(name)

    def generate_verification_code(self, name: str, if_match: str | None = None) -> CaCertificate:
        current = self.get(name)
        self._check_etag(current, if_match)
        code = secrets.token_hex(24).upper()  # 48 upper-case hex characters, like the documented examples
        self._store.execute(
            "UPDATE certificates SET verification_code=?, etag=?, updated=? WHERE name=?",
            (code, _new_etag(), utc_now(), name),
        )
        return self.get(name)

    def verify(self, name: str, pem: str, if_match: str | None = None) -> CaCertificate:
        """Proof of possession: CN must be the current code and the signature must come from this CA's key."""
        current = self.get(name)
        self._check_etag(current, if_match)
        if not current.verification_code:
            raise bad_request(f"certificate '{name}': generate a verification code first", 400006)
        proof = parse_single_certificate(pem, "verification certificate")
        if _common_name(proof) != current.verification_code:
            raise bad_request(
                f"verification certificate CN '{_common_name(proof)}' is not the current verification code",
                400006,
            )
        try:
            proof.verify_directly_issued_by(current.certificate)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise bad_request(
                f"verification certificate is not signed by the key of certificate '{name}'"
                f" ({exc or 'bad signature'})",
                400006,
            ) from exc
        now = datetime.now(UTC)
        if not proof.not_valid_before_utc <= now <= proof.not_valid_after_utc:
            raise bad_request("verification certificate is not valid now", 400006)
        self._store.execute(
            "UPDATE certificates SET is_verified=1, verification_code=NULL, etag=?, updated=? WHERE name=?",
            (_new_etag(), utc_now(), name),
        )
        log.info("certificate %s verified by proof of possession", name)
        return self.get(name)

    def delete(self, name: str, if_match: str | None = None) -> None:
        current = self.get(name)
        self._check_etag(current, if_match)
        users = [
            r["group_id"]
            for r in self._store.all("SELECT group_id FROM enrollment_groups WHERE ca_name=?", (name,))
        ]
        if users:  # groups reference by name: they match nothing until a CA of that name is verified again
            log.warning(
                "certificate %s deleted while enrollment group(s) %s reference it", name, ", ".join(users)
            )
        self._store.execute("DELETE FROM certificates WHERE name=?", (name,))
        log.info("certificate %s deleted", name)
        self.on_change()


def _new_etag() -> str:
    return secrets.token_hex(8)
