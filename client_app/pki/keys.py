"""Key generation and PEM (de)serialisation of private keys."""

from __future__ import annotations

from enum import StrEnum

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from client_app.pki.errors import PkiError

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class KeyType(StrEnum):
    """Supported key types; the values are the CLI spellings."""

    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"


_CURVES = {KeyType.EC_P256: ec.SECP256R1, KeyType.EC_P384: ec.SECP384R1}
_RSA_BITS = {KeyType.RSA_2048: 2048, KeyType.RSA_3072: 3072, KeyType.RSA_4096: 4096}


def generate_key(key_type: KeyType = KeyType.EC_P256) -> PrivateKey:
    key_type = KeyType(key_type)
    if key_type in _CURVES:
        return ec.generate_private_key(_CURVES[key_type]())
    return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[key_type])


def describe_public_key(public_key: object) -> str:
    """Short human name of a public key, e.g. 'EC secp384r1' or 'RSA 2048'."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"EC {public_key.curve.name}"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size}"
    return type(public_key).__name__


def signature_hash(key: PrivateKey) -> hashes.HashAlgorithm:
    """Hash matched to the signing key's strength (P-384 gets SHA-384, as RFC 5480 recommends)."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def same_public_key(a: PublicKey, b: PublicKey) -> bool:
    def spki(key: PublicKey) -> bytes:
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    return spki(a) == spki(b)


def private_key_to_pem(key: PrivateKey, passphrase: bytes | None) -> bytes:
    """PKCS#8 PEM, encrypted ('ENCRYPTED PRIVATE KEY') unless passphrase is None."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def pem_begin(label: str) -> bytes:
    """The armour line that opens a PEM block, e.g. pem_begin("ENCRYPTED PRIVATE KEY")."""
    return b"-----BEGIN " + label.encode("ascii") + b"-----"


def is_encrypted_pem(data: bytes) -> bool:
    return pem_begin("ENCRYPTED PRIVATE KEY") in data or b"Proc-Type: 4,ENCRYPTED" in data


def load_private_key(data: bytes, passphrase: bytes | None, source: str) -> PrivateKey:
    """Load a PEM private key; every failure becomes one PkiError line naming `source`."""
    if is_encrypted_pem(data) and not passphrase:
        raise PkiError(f"{source}: the private key is encrypted and no passphrase was given")
    try:
        key = serialization.load_pem_private_key(data, passphrase if is_encrypted_pem(data) else None)
    except ValueError as exc:
        if is_encrypted_pem(data):
            raise PkiError(f"{source}: wrong passphrase (cannot decrypt the private key)") from exc
        raise PkiError(f"{source}: not a readable PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PkiError(f"{source}: unsupported key type {type(key).__name__} (EC or RSA only)")
    return key
