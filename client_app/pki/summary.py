"""Human-readable certificate summaries for `client-app-pki show`."""

from __future__ import annotations

from cryptography import x509

from client_app.pki.files import sha1_thumbprint, sha256_thumbprint
from client_app.pki.keys import describe_public_key

_KEY_USAGE_NAMES = {
    "digital_signature": "digitalSignature",
    "content_commitment": "contentCommitment",
    "key_encipherment": "keyEncipherment",
    "data_encipherment": "dataEncipherment",
    "key_agreement": "keyAgreement",
    "key_cert_sign": "keyCertSign",
    "crl_sign": "cRLSign",
}


def _oid_name(oid: x509.ObjectIdentifier) -> str:
    # cryptography keeps its short names in the private `_name`; fall back to the dotted form.
    return getattr(oid, "_name", oid.dotted_string)


def _extension_value(value: x509.ExtensionType) -> str:
    match value:
        case x509.BasicConstraints(ca=ca, path_length=path_length):
            pathlen = "" if path_length is None else f", pathlen:{path_length}"
            return f"CA:{'TRUE' if ca else 'FALSE'}{pathlen}"
        case x509.KeyUsage():
            return ", ".join(label for attr, label in _KEY_USAGE_NAMES.items() if getattr(value, attr))
        case x509.ExtendedKeyUsage():
            return ", ".join(_oid_name(oid) for oid in value)
        case x509.SubjectKeyIdentifier():
            return value.digest.hex(":").upper()
        case x509.AuthorityKeyIdentifier(key_identifier=bytes() as key_id):
            return "keyid:" + key_id.hex(":").upper()
        case x509.SubjectAlternativeName():
            return ", ".join(f"{type(name).__name__.removesuffix('Name')}:{name.value}" for name in value)
        case _:
            return repr(value)


def describe_certificate(cert: x509.Certificate) -> str:
    lines = [
        f"subject:     {cert.subject.rfc4514_string()}",
        f"issuer:      {cert.issuer.rfc4514_string()}",
        f"serial:      {cert.serial_number:X}",
        f"valid from:  {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC",
        f"valid until: {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
        f"key:         {describe_public_key(cert.public_key())}",
        f"signature:   {_oid_name(cert.signature_algorithm_oid)}",
        "extensions:",
    ]
    for extension in cert.extensions:
        critical = " (critical)" if extension.critical else ""
        lines.append(f"  {_oid_name(extension.oid)}{critical}: {_extension_value(extension.value)}")
    lines += [f"SHA-1:       {sha1_thumbprint(cert)}", f"SHA-256:     {sha256_thumbprint(cert)}"]
    return "\n".join(lines)
