"""The CertificateAuthority object and the certificate profiles it issues."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from client_app.pki.errors import PkiError
from client_app.pki.keys import KeyType, PrivateKey, PublicKey, generate_key, same_public_key, signature_hash
from client_app.pki.names import validate_registration_id

# Tolerates clock skew between the issuing machine and the verifier without making certs valid long before.
BACKDATE = timedelta(minutes=5)
VERIFICATION_DAYS = 30


def _name(common_name: str) -> x509.Name:
    if not 1 <= len(common_name) <= 64:  # RFC 5280 ub-common-name
        raise PkiError(f"common name {common_name!r} must be 1-64 characters long")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_agreement: bool = False,
    cert_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


_CA_KEY_USAGE = _key_usage(digital_signature=True, cert_sign=True)


def _check_public_key(public_key: object) -> PublicKey:
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise PkiError(f"unsupported public key type {type(public_key).__name__} (EC or RSA only)")
    return public_key


class CertificateAuthority:
    """A CA certificate with its key and the certificates above it; issues intermediates and leaves."""

    def __init__(
        self, certificate: x509.Certificate, key: PrivateKey, chain: Sequence[x509.Certificate] = ()
    ) -> None:
        if not same_public_key(certificate.public_key(), key.public_key()):
            subject = certificate.subject.rfc4514_string()
            raise PkiError(f"the private key does not match the certificate {subject}")
        self.certificate = certificate
        self.key = key
        self.chain: tuple[x509.Certificate, ...] = tuple(chain)

    def __repr__(self) -> str:
        return f"<CertificateAuthority {self.certificate.subject.rfc4514_string()}>"

    @classmethod
    def root(
        cls,
        common_name: str = "client_app Root CA",
        *,
        key_type: KeyType = KeyType.EC_P384,
        days: int = 3650,
        path_length: int | None = None,
    ) -> CertificateAuthority:
        key = generate_key(key_type)
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        return cls(builder.sign(key, signature_hash(key)), key)

    @property
    def path_length(self) -> int | None:
        return self.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length

    def is_root(self) -> bool:
        # Self-issued, whatever chain was passed along: a root with pathlen 0 and a padded chain is still
        # a root, and its key must never pass for an issuing intermediate (issuer bundle, build check).
        return self.certificate.subject == self.certificate.issuer

    @property
    def common_name(self) -> str:
        return str(self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)

    def intermediate(
        self,
        common_name: str,
        *,
        path_length: int | None = 0,
        key_type: KeyType = KeyType.EC_P384,
        days: int = 1825,
    ) -> CertificateAuthority:
        limit = self.path_length
        if limit == 0:
            raise PkiError(f"{self.common_name} has pathLenConstraint 0: it cannot sign another CA")
        if limit is not None and (path_length is None or path_length >= limit):
            raise PkiError(
                f"{self.common_name} has pathLenConstraint {limit}: a CA below needs a smaller one"
            )
        key = generate_key(key_type)
        extensions = [
            (x509.BasicConstraints(ca=True, path_length=path_length), True),
            (_CA_KEY_USAGE, True),
        ]
        cert = self._sign(common_name, key.public_key(), days, extensions)
        return CertificateAuthority(cert, key, (self.certificate, *self.chain))

    def issue_device(
        self, registration_id: str, public_key: PublicKey, *, days: int = 365
    ) -> x509.Certificate:
        """Device leaf for DPS X.509 group enrollment: CN = registration id, TLS client authentication."""
        public_key = _check_public_key(public_key)
        is_ec = isinstance(public_key, ec.EllipticCurvePublicKey)
        extensions = [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_key_usage(digital_signature=True, key_agreement=is_ec), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        ]
        return self._sign(validate_registration_id(registration_id), public_key, days, extensions)

    def issue_verification(self, code: str) -> tuple[x509.Certificate, PrivateKey]:
        """DPS/IoT Hub proof-of-possession certificate: CN = verification code, signed by this CA's key."""
        key = generate_key(KeyType.EC_P256)
        extensions = [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_key_usage(digital_signature=True), True),
        ]
        return self._sign(code, key.public_key(), VERIFICATION_DAYS, extensions), key

    def issue_server(
        self,
        dns_names: Sequence[str],
        ip_addresses: Sequence[str] = (),
        *,
        days: int = 825,
        key_type: KeyType = KeyType.EC_P256,
    ) -> tuple[x509.Certificate, PrivateKey]:
        """TLS server certificate (local cloud); CN = first name, every name and address in the SAN."""
        if isinstance(dns_names, str) or isinstance(ip_addresses, str):
            raise PkiError("dns_names and ip_addresses must be sequences of strings, not a single string")
        try:
            ips = [ipaddress.ip_address(address) for address in ip_addresses]
        except ValueError as exc:
            raise PkiError(str(exc)) from exc
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        names += [x509.IPAddress(ip) for ip in ips]
        if not names:
            raise PkiError("a server certificate needs at least one DNS name or IP address")
        key = generate_key(key_type)
        extensions = [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_key_usage(digital_signature=True, key_encipherment=isinstance(key, rsa.RSAPrivateKey)), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (x509.SubjectAlternativeName(names), False),
        ]
        common_name = dns_names[0] if dns_names else str(ips[0])
        return self._sign(common_name, key.public_key(), days, extensions), key

    def _sign(
        self,
        common_name: str,
        public_key: PublicKey,
        days: int,
        extensions: list[tuple[x509.ExtensionType, bool]],
    ) -> x509.Certificate:
        """Sign a certificate below this CA: random serial, validity clamped into ours, SKI and AKI."""
        if days < 1:
            raise PkiError(f"validity must be at least one day, not {days}")
        now = datetime.now(UTC)
        ours = self.certificate
        if not ours.not_valid_before_utc <= now <= ours.not_valid_after_utc:
            start, end = ours.not_valid_before_utc, ours.not_valid_after_utc
            raise PkiError(
                f"the issuing CA {self.common_name} is not valid now"
                f" (valid from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC)"
            )
        try:
            our_ski = ours.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(our_ski)
        except x509.ExtensionNotFound:  # a CA made elsewhere without SKI: derive the same key id
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        not_after = ours.not_valid_after_utc
        if days <= (not_after - now).days:  # compare before adding: a huge --days would overflow datetime
            not_after = now + timedelta(days=days)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ours.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(max(now - BACKDATE, ours.not_valid_before_utc))
            .not_valid_after(not_after)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(aki, critical=False)
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(self.key, signature_hash(self.key))
