"""On-disk CA workspace: DIR/root.cert.pem, DIR/intermediate-K.cert.pem, keys in DIR/private/ (0600).

intermediate-1 is signed by the root, intermediate-K by intermediate-(K-1); the last one is the
issuing CA (pathLenConstraint 0).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from cryptography import x509

from client_app.pki.ca import CertificateAuthority
from client_app.pki.errors import PkiError
from client_app.pki.files import atomic_write_all, certificate_to_pem, load_certificates, read_file
from client_app.pki.keys import KeyType, is_encrypted_pem, load_private_key, private_key_to_pem

ROOT = "root"


def _intermediate(k: int) -> str:
    return f"intermediate-{k}"


class Workspace:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def cert_path(self, name: str) -> Path:
        return self.directory / f"{name}.cert.pem"

    def key_path(self, name: str) -> Path:
        return self.directory / "private" / f"{name}.key.pem"

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        intermediates: int = 1,
        key_type: KeyType = KeyType.EC_P384,
        passphrase: bytes | None,
        force: bool = False,
    ) -> Workspace:
        """Make a root and `intermediates` chained intermediates; keys encrypted unless passphrase is None."""
        if intermediates < 1:
            raise PkiError("a workspace needs at least one intermediate (the issuing CA)")
        workspace = cls(directory)
        names = [ROOT] + [_intermediate(k) for k in range(1, intermediates + 1)]
        targets = [path for name in names for path in (workspace.cert_path(name), workspace.key_path(name))]
        existing = [path for path in targets if path.exists()]
        if existing and not force:  # a lone key from an earlier run is never silently replaced either
            raise PkiError(
                f"{directory} already holds a CA workspace ({existing[0]} exists; use --force to replace it)"
            )
        # Everything is generated before the first write, so a failure leaves no half-made workspace.
        cas = [CertificateAuthority.root(key_type=key_type)]
        for k in range(1, intermediates + 1):
            cas.append(
                cas[-1].intermediate(
                    f"client_app Intermediate CA {k}", path_length=intermediates - k, key_type=key_type
                )
            )
        private = workspace.directory / "private"
        try:
            private.mkdir(mode=0o700, parents=True, exist_ok=True)
            private.chmod(0o700)  # also when the directory was already there, perhaps world-readable
        except OSError as exc:
            raise PkiError(f"cannot create {private}: {exc.strerror}") from exc
        outputs: dict[Path, tuple[bytes, int]] = {}
        for name, ca in zip(names, cas, strict=True):
            outputs[workspace.key_path(name)] = (private_key_to_pem(ca.key, passphrase), 0o600)
            outputs[workspace.cert_path(name)] = (certificate_to_pem(ca.certificate), 0o644)
        atomic_write_all(outputs)
        if force:
            workspace._remove_intermediates_from(intermediates + 1)
        return workspace

    def _remove_intermediates_from(self, first: int) -> None:
        """Drop intermediates a replaced workspace had beyond the new chain length."""
        k = first
        while self.cert_path(_intermediate(k)).exists():
            for path in (self.cert_path(_intermediate(k)), self.key_path(_intermediate(k))):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            k += 1

    @property
    def names(self) -> list[str]:
        """CA names from the root down: ['root', 'intermediate-1', ...]."""
        if not self.cert_path(ROOT).is_file():
            raise PkiError(f"{self.directory}: no CA workspace here (make one with: client-app-pki init DIR)")
        names = [ROOT]
        while self.cert_path(_intermediate(len(names))).is_file():
            names.append(_intermediate(len(names)))
        return names

    @property
    def issuing_name(self) -> str:
        return self.names[-1]

    def check_name(self, name: str) -> str:
        if name not in self.names:
            raise PkiError(f"unknown CA {name!r} in {self.directory} (have: {', '.join(self.names)})")
        return name

    def key_is_encrypted(self, name: str) -> bool:
        return is_encrypted_pem(read_file(self.key_path(self.check_name(name))))

    def certificate(self, name: str) -> x509.Certificate:
        return load_certificates(self.cert_path(self.check_name(name)))[0]

    def load_ca(self, name: str, passphrase: bytes | None) -> CertificateAuthority:
        """The named CA with its key, and the certificates above it (nearest first, root last)."""
        names = self.names
        above = names[: names.index(self.check_name(name))]
        key_path = self.key_path(name)
        key = load_private_key(read_file(key_path), passphrase, str(key_path))
        chain = [self.certificate(parent) for parent in reversed(above)]
        return CertificateAuthority(self.certificate(name), key, chain)
