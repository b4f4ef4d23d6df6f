"""`client-app-pki`: CA workspace, device, verification and issuer-bundle certificates from the shell.

Every failure is one line on stderr and a non-zero exit; nothing is written unless everything
needed was read and generated first.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from client_app.pki.bundle import ISSUER_BUNDLE_PASSPHRASE, write_issuer_bundle
from client_app.pki.ca import CertificateAuthority
from client_app.pki.errors import PkiError
from client_app.pki.files import (
    atomic_write_all,
    certificate_to_pem,
    load_certificates,
    read_file,
    read_passphrase_file,
)
from client_app.pki.keys import (
    KeyType,
    PrivateKey,
    generate_key,
    is_encrypted_pem,
    load_private_key,
    private_key_to_pem,
)
from client_app.pki.names import validate_registration_id
from client_app.pki.summary import describe_certificate
from client_app.pki.verify import verify_client_chain
from client_app.pki.workspace import ROOT, Workspace

PASSPHRASE_ENV = "CLIENT_APP_PKI_PASSPHRASE"
PATH = click.Path(path_type=Path)  # existence is checked by the library so the error stays one line
KEY_TYPES = click.Choice([key_type.value for key_type in KeyType])


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except PkiError as exc:
            raise click.ClickException(str(exc)) from exc


passphrase_option = click.option(
    "--passphrase-file",
    type=PATH,
    help=f"Workspace passphrase: first line of this file (else ${PASSPHRASE_ENV}, else a prompt).",
)
force_option = click.option("--force", is_flag=True, help="Replace existing output files.")


def _workspace_passphrase(passphrase_file: Path | None, *, confirm: bool = False) -> bytes:
    if passphrase_file is not None:
        return read_passphrase_file(passphrase_file)
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV].encode()
    if sys.stdin is None or not sys.stdin.isatty():
        # Without a terminal getpass would echo a piped line, or wait forever on an open pipe (CI).
        raise PkiError(f"no passphrase: use --passphrase-file or set {PASSPHRASE_ENV} (no terminal to ask)")
    # click asks again on empty input, so the passphrase is never empty.
    passphrase = click.prompt("Workspace passphrase", hide_input=True, confirmation_prompt=confirm, err=True)
    return passphrase.encode()


def _workspace_ca(directory: Path, name: str | None) -> tuple[Workspace, str]:
    """The workspace and the checked CA name (default: the issuing CA), before any passphrase prompt."""
    workspace = Workspace(directory)
    return workspace, workspace.check_name(name or workspace.issuing_name)


def _load_ca(
    workspace: Workspace, name: str, passphrase_file: Path | None
) -> tuple[CertificateAuthority, bytes | None]:
    """Load a CA with its key; ask for the passphrase only if that key is encrypted."""
    passphrase = _workspace_passphrase(passphrase_file) if workspace.key_is_encrypted(name) else None
    return workspace.load_ca(name, passphrase), passphrase


def _refuse_existing(paths: list[Path], force: bool) -> None:
    for path in paths:
        if path.exists() and not force:
            raise PkiError(f"{path} already exists (use --force to replace it)")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Certificates for DPS X.509 group enrollment: CA workspace, devices, proof of possession, bundle."""


@main.command()
@click.argument("directory", type=PATH)
@click.option("--intermediates", default=1, show_default=True, type=click.IntRange(1, 8))
@click.option("--key-type", type=KEY_TYPES, default=KeyType.EC_P384.value, show_default=True)
@click.option("--no-passphrase", is_flag=True, help="Store the CA keys unencrypted (tests and demos only).")
@passphrase_option
@force_option
def init(
    directory: Path,
    intermediates: int,
    key_type: str,
    no_passphrase: bool,
    passphrase_file: Path | None,
    force: bool,
) -> None:
    """Create a CA workspace in DIRECTORY: a root and a chain of intermediates, the last one issuing."""
    passphrase = None if no_passphrase else _workspace_passphrase(passphrase_file, confirm=True)
    workspace = Workspace.create(
        directory, intermediates=intermediates, key_type=KeyType(key_type), passphrase=passphrase, force=force
    )
    for name in workspace.names:
        click.echo(workspace.cert_path(name))


@main.command("verification-cert")
@click.argument("directory", type=PATH)
@click.option("--code", required=True, help="Verification code from DPS or IoT Hub (becomes the CN).")
@click.option("--ca", "ca_name", default=ROOT, show_default=True, help="root or intermediate-K.")
@click.option("--out", required=True, type=PATH, help="PEM output; the DER copy goes next to it as .cer.")
@passphrase_option
@force_option
def verification_cert(
    directory: Path, code: str, ca_name: str, out: Path, passphrase_file: Path | None, force: bool
) -> None:
    """Write the proof-of-possession certificate for the CA named by --ca (its key is not kept)."""
    der_out = out.with_suffix(".cer")
    if der_out == out:
        raise PkiError(f"{out}: the PEM output must not end in .cer (the DER copy is written there)")
    workspace, ca_name = _workspace_ca(directory, ca_name)
    _refuse_existing([out, der_out], force)
    ca, _ = _load_ca(workspace, ca_name, passphrase_file)
    cert, _key = ca.issue_verification(code)
    der = cert.public_bytes(serialization.Encoding.DER)
    atomic_write_all({out: (certificate_to_pem(cert), 0o644), der_out: (der, 0o644)})
    click.echo(out)
    click.echo(der_out)


@main.command("issue-device")
@click.argument("directory", type=PATH)
@click.argument("registration_id")
@click.option("--out", "out_dir", required=True, type=PATH, help="Output directory (created if missing).")
@click.option("--ca", "ca_name", help="Issuing CA, intermediate-K (default: the last intermediate).")
@click.option("--days", default=365, show_default=True, type=click.IntRange(1))
@click.option("--key-type", type=KEY_TYPES, default=KeyType.EC_P256.value, show_default=True)
@click.option(
    "--pfx-password-file", type=PATH, help="Also write a .pfx (key, leaf, chain) with this password."
)
@passphrase_option
@force_option
def issue_device(
    directory: Path,
    registration_id: str,
    out_dir: Path,
    ca_name: str | None,
    days: int,
    key_type: str,
    pfx_password_file: Path | None,
    passphrase_file: Path | None,
    force: bool,
) -> None:
    """Issue a device leaf with CN = REGISTRATION_ID into OUT/REGISTRATION_ID.{key,cert,fullchain}.pem.

    The device key is encrypted with the workspace passphrase (plaintext only in a --no-passphrase
    workspace). With --force an existing key is reused, never replaced, so the new certificate is a
    renewal for the same key; the full chain holds the leaf and the intermediates, never the root.
    """
    validate_registration_id(registration_id)
    suffixes = (".key.pem", ".cert.pem", ".fullchain.pem", ".pfx")
    key_path, cert_path, chain_path, pfx_path = (out_dir / f"{registration_id}{s}" for s in suffixes)
    workspace, ca_name = _workspace_ca(directory, ca_name)
    _refuse_existing([key_path, cert_path, chain_path, pfx_path], force)
    pfx_password = read_passphrase_file(pfx_password_file) if pfx_password_file else None
    ca, passphrase = _load_ca(workspace, ca_name, passphrase_file)
    existing_key = read_file(key_path) if key_path.exists() else None
    if existing_key is not None:
        key = load_private_key(existing_key, passphrase, str(key_path))
    else:
        key = generate_key(KeyType(key_type))
    cert = ca.issue_device(registration_id, key.public_key(), days=days)
    intermediates = [c for c in (ca.certificate, *ca.chain) if c.subject != c.issuer]
    outputs = {
        cert_path: (certificate_to_pem(cert), 0o644),
        chain_path: (b"".join(certificate_to_pem(c) for c in [cert, *intermediates]), 0o644),
    }
    if existing_key is None:
        outputs = {key_path: (private_key_to_pem(key, passphrase), 0o600), **outputs}
    if pfx_password is not None:
        outputs[pfx_path] = (_pfx(registration_id, key, cert, intermediates, pfx_password), 0o600)
    try:
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise PkiError(f"cannot create {out_dir}: {exc.strerror}") from exc
    atomic_write_all(outputs)  # all or none: never a new key without its certificate
    for path in outputs:
        click.echo(path)


def _pfx(
    name: str, key: PrivateKey, cert: x509.Certificate, chain: list[x509.Certificate], password: bytes
) -> bytes:
    # AES-256/PBKDF2 + SHA-256 MAC: what OpenSSL 3 and current Windows expect, not legacy RC2/3DES.
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(100_000)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(password)
    )
    return pkcs12.serialize_key_and_certificates(name.encode(), key, cert, chain, encryption)


@main.command("issuer-bundle")
@click.argument("directory", type=PATH)
@click.option("--out", required=True, type=PATH)
@click.option("--ca", "ca_name", help="Issuing CA, intermediate-K (default: the last intermediate).")
@click.option(
    "--bundle-passphrase-file", type=PATH, help="Passphrase for the bundled key (default: the built-in one)."
)
@passphrase_option
@force_option
def issuer_bundle(
    directory: Path,
    out: Path,
    ca_name: str | None,
    bundle_passphrase_file: Path | None,
    passphrase_file: Path | None,
    force: bool,
) -> None:
    """Write the issuer bundle the desktop app embeds: issuing CA certificate and key plus the chain above.

    Refuses the root and any CA whose pathLenConstraint is not 0. The bundled key is encrypted with a
    passphrase the app knows, which only keeps it off the disk in plaintext; see docs/pki.md.
    """
    bundle_passphrase = (
        read_passphrase_file(bundle_passphrase_file) if bundle_passphrase_file else ISSUER_BUNDLE_PASSPHRASE
    )
    workspace, ca_name = _workspace_ca(directory, ca_name)
    _refuse_existing([out], force)
    ca, _ = _load_ca(workspace, ca_name, passphrase_file)
    write_issuer_bundle(ca, out, bundle_passphrase)
    click.echo(out)


@main.command()
@click.argument("file", type=PATH)
def show(file: Path) -> None:
    """Summarise the certificates in FILE (PEM or DER certificate, chain or issuer bundle)."""
    certs = load_certificates(file)
    try:
        summaries = [describe_certificate(cert) for cert in certs]
    except (ValueError, UnsupportedAlgorithm) as exc:  # extensions and keys are parsed only when read
        raise PkiError(f"{file}: malformed certificate ({exc})") from exc
    for index, summary in enumerate(summaries):
        if len(certs) > 1:
            click.echo(f"[certificate {index + 1} of {len(certs)}]")
        click.echo(summary)
    data = read_file(file)
    if b"PRIVATE KEY-----" in data:
        state = "encrypted PKCS#8" if is_encrypted_pem(data) else "PLAINTEXT"
        click.echo(f"private key: present ({state})")


@main.command()
@click.argument("leaf", type=PATH)
@click.option("--root", "root_file", required=True, type=PATH, help="Trust anchor(s), PEM or DER.")
@click.option("--chain", "chain_file", type=PATH, help="Intermediates (untrusted), PEM.")
def verify(leaf: Path, root_file: Path, chain_file: Path | None) -> None:
    """Verify LEAF as a TLS client certificate up to --root; extra certificates in LEAF count as chain."""
    leaf_cert, *intermediates = load_certificates(leaf)
    if chain_file is not None:
        intermediates += load_certificates(chain_file)
    verify_client_chain(leaf_cert, load_certificates(root_file), intermediates)
    click.echo("OK")
