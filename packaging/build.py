"""Build the end-user app: `uv run python packaging/build.py --issuer-bundle FILE`.

Produces dist/client-app/client-app (PyInstaller, one folder) with the issuer bundle at
resources/issuer-bundle.pem inside it. The bundle is checked before it is embedded: it must open,
its key must belong to a non-root issuing CA with pathLenConstraint 0, and it must hold exactly
one private key, so a root CA key can never ride along.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "packaging" / "client-app.spec"
BUNDLE_NAME = "issuer-bundle.pem"


def check_issuer_bundle(path: Path) -> None:
    """Refuse a bundle that would put more than the issuing intermediate's key into the app."""
    from client_app.pki import PkiError, load_issuer_bundle

    try:
        ca = load_issuer_bundle(path)  # one clear line for a missing or unreadable file, too
    except PkiError as exc:
        raise SystemExit(f"error: {exc}") from None
    if path.read_bytes().count(b"PRIVATE KEY-----") != 2:  # one BEGIN and one END line
        raise SystemExit(f"error: {path}: an issuer bundle must hold exactly one private key")
    if ca.is_root() or ca.path_length != 0:
        raise SystemExit(f"error: {path}: the embedded CA must be an intermediate with pathLenConstraint 0")


def build(issuer_bundle: Path, dist: Path, work: Path) -> Path:
    import PyInstaller.__main__

    from client_app.device.paths import VERSION_FILE

    check_issuer_bundle(issuer_bundle)
    with tempfile.TemporaryDirectory(prefix="client-app-resources-") as staged:
        staged_dir = Path(staged)
        shutil.copytree(
            ROOT / "resources",
            staged_dir,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("*.pem", "*.key", "README.md"),
        )
        shutil.copyfile(issuer_bundle, staged_dir / BUNDLE_NAME)
        # The app reads its version here (device/twin.py): importlib.metadata is slow to import on a start.
        (staged_dir / VERSION_FILE).write_text(
            importlib.metadata.version("client-app") + "\n", encoding="utf-8"
        )
        (staged_dir / BUNDLE_NAME).chmod(0o644)
        os.environ["CLIENT_APP_STAGED_RESOURCES"] = str(staged_dir)
        PyInstaller.__main__.run(
            [
                str(SPEC),
                "--noconfirm",
                "--log-level",
                "WARN",
                "--distpath",
                str(dist),
                "--workpath",
                str(work),
            ]
        )
    return dist / "client-app" / "client-app"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--issuer-bundle", type=Path, required=True, help="file written by `client-app-pki issuer-bundle`"
    )
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    parser.add_argument("--work", type=Path, default=ROOT / "build", help="PyInstaller work folder")
    args = parser.parse_args(argv)
    if not args.issuer_bundle.is_file():
        parser.error(f"issuer bundle not found: {args.issuer_bundle}")
    executable = build(args.issuer_bundle.resolve(), args.dist.resolve(), args.work.resolve())
    print(executable)
    return 0


if __name__ == "__main__":
    sys.exit(main())
