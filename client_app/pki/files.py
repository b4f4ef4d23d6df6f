"""File helpers: atomic writes, certificate PEM/DER I/O, thumbprints, passphrase files."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from client_app.pki.errors import PkiError


class FileWriteError(PkiError, OSError):
    """A file could not be written; one line. An OSError too, so callers outside the PKI catch it as such."""


def atomic_write(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Write all of `data` or nothing: temp file in the same directory (created 0600, then `mode`),
    fsync unless `durable` is False (a live view rewritten on every change), os.replace.

    The one atomic-write helper of the app: PKI files, device state, config.toml, diagnostics zips.
    """
    atomic_write_all({Path(path): (data, mode)}, durable=durable)


def atomic_write_all(files: Mapping[Path, tuple[bytes, int]], *, durable: bool = True) -> None:
    """Write several files (path -> (data, mode)) so that a failure leaves none of them new.

    Every file is staged and synced first; only then are they renamed into place, so a full disk or
    a bad path cannot leave, say, a new key without its certificate. A rename that still fails removes
    the files this call created (files it replaced, with --force, stay replaced).
    """
    staged: dict[Path, str] = {}
    try:
        for path, (data, mode) in files.items():
            staged[path] = _stage(path, data, mode, durable)
    except FileWriteError:
        _discard(staged.values())
        raise
    created = [path for path in staged if not path.exists()]
    for path, temp in staged.items():
        try:
            os.replace(temp, path)
        except OSError as exc:
            _discard([*staged.values(), *map(str, created)])
            raise FileWriteError(f"cannot write {path}: {exc.strerror}") from exc


def _stage(path: Path, data: bytes, mode: int, durable: bool) -> str:
    """A (synced) temp file next to `path` holding `data` with `mode`; its name is returned.

    mkstemp creates the file 0600, so a key is never readable by others, not even for a moment.
    """
    if path.is_dir():  # os.replace would fail only after other files had already been renamed
        raise FileWriteError(f"cannot write {path}: Is a directory")
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise FileWriteError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as stream:
            os.fchmod(stream.fileno(), mode)
            stream.write(data)
            if durable:
                stream.flush()
                os.fsync(stream.fileno())
    except OSError as exc:
        _discard([temp])
        raise FileWriteError(f"cannot write {path}: {exc.strerror}") from exc
    return temp


def _discard(paths: Iterable[str]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


def read_file(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise PkiError(f"cannot read {path}: {exc.strerror}") from exc


def read_passphrase_file(path: Path) -> bytes:
    """The file's first line (trailing newline dropped), like openssl's `-passin file:`."""
    lines = read_file(path).splitlines()
    if not lines or not lines[0]:
        raise PkiError(f"{path}: the passphrase file is empty")
    return lines[0]


def certificate_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_certificates(path_or_bytes: Path | str | bytes) -> list[x509.Certificate]:
    """All certificates in a PEM file (in order) or the single certificate of a DER file."""
    if isinstance(path_or_bytes, bytes):
        data, source = path_or_bytes, "data"
    else:
        data, source = read_file(Path(path_or_bytes)), str(path_or_bytes)
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data) if b"CERTIFICATE-----" in data else []
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise PkiError(f"{source}: not a readable PEM or DER certificate") from exc
    if not certs:
        raise PkiError(f"{source}: contains no certificate")
    return certs


def sha1_thumbprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # DPS and IoT Hub still display SHA-1


def sha256_thumbprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex().upper()
