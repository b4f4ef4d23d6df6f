"""Build the end-user app with PyInstaller, then run the frozen executable for real."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from cryptography import x509

from client_app.gui.diagnostics import VERSION_PACKAGES
from client_app.pki import (
    ISSUER_BUNDLE_PASSPHRASE,
    CertificateAuthority,
    PrivateKey,
    certificate_to_pem,
    load_certificates,
    private_key_to_pem,
    write_issuer_bundle,
)
from client_app.pki.keys import pem_begin
from tests.fixtures.cloud import enroll_root
from tests.fixtures.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
# A key block (armour line + base64), not the bare marker string that some libraries contain.
PEM_KEY = re.compile(pem_begin("[A-Z ]*PRIVATE KEY") + rb"\r?\n[A-Za-z0-9+/]")


@dataclass(frozen=True)
class FrozenApp:
    executable: Path
    root: CertificateAuthority

    def run(self, *args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.executable), *args], env=env, capture_output=True, text=True, timeout=timeout
        )


def _build(bundle: Path, work: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(ROOT / "packaging" / "build.py"), "--issuer-bundle", str(bundle)]
    command += ["--dist", str(work / "dist"), "--work", str(work / "build")]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def frozen_app(tmp_path_factory: pytest.TempPathFactory) -> FrozenApp:
    work = tmp_path_factory.mktemp("pyinstaller")
    root = CertificateAuthority.root("packaging-test Root CA")
    bundle = work / "issuer-bundle.pem"
    write_issuer_bundle(root.intermediate("packaging-test Issuing CA"), bundle)
    build = _build(bundle, work)
    assert build.returncode == 0, build.stderr[-3000:]
    executable = Path(build.stdout.strip().splitlines()[-1])
    assert executable == work / "dist" / "client-app" / "client-app"
    return FrozenApp(executable, root)


def _app_env(tmp_path: Path, extra: dict[str, str]) -> dict[str, str]:
    """A minimal environment, as a desktop session would give: no virtualenv, no project on sys.path."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", **extra}


def _pem(ca: CertificateAuthority, chain: list[x509.Certificate], *keys: PrivateKey) -> bytes:
    pems = [certificate_to_pem(cert) for cert in (ca.certificate, *chain)]
    return b"".join(pems + [private_key_to_pem(key, ISSUER_BUNDLE_PASSPHRASE) for key in keys])


def test_build_refuses_a_bundle_that_could_carry_a_ca_key(tmp_path: Path) -> None:
    """The check runs before PyInstaller: each of these would put a root (or CA-making) key in the app."""
    root = CertificateAuthority.root("build-check Root CA")
    issuing = root.intermediate("build-check Issuing CA")
    upper = root.intermediate("build-check Upper CA", path_length=1)
    narrow_root = CertificateAuthority.root("build-check pathlen-0 Root CA", path_length=0)
    bundles = {
        "root key appended": _pem(issuing, [root.certificate], issuing.key, root.key),
        "pathlen-0 root with a padded chain": _pem(narrow_root, [narrow_root.certificate], narrow_root.key),
        "intermediate that can sign CAs": _pem(upper, [root.certificate], upper.key),
    }
    for case, text in bundles.items():
        (tmp_path / "bundle.pem").write_bytes(text)
        build = _build(tmp_path / "bundle.pem", tmp_path)
        assert build.returncode != 0, case
        assert build.stderr.strip().splitlines()[-1].startswith("error: "), (case, build.stderr)
        assert not (tmp_path / "dist").exists() and not (tmp_path / "build").exists(), case


def test_build_embeds_only_the_issuing_key(frozen_app: FrozenApp) -> None:
    internal = frozen_app.executable.parent / "_internal"
    bundle = internal / "resources" / "issuer-bundle.pem"
    holders = [p for p in internal.rglob("*") if p.is_file() and PEM_KEY.search(p.read_bytes())]
    assert holders == [bundle]
    assert [m.group() for m in PEM_KEY.finditer(bundle.read_bytes())] == [
        pem_begin("ENCRYPTED PRIVATE KEY") + b"\nM"
    ]
    issuing = load_certificates(bundle.read_bytes())[0]
    assert issuing.subject != frozen_app.root.certificate.subject


def test_build_leaves_out_operator_code(frozen_app: FrozenApp) -> None:
    listing = subprocess.run(
        [
            sys.executable,
            "-m",
            "PyInstaller.utils.cliutils.archive_viewer",
            "-r",
            "-b",
            str(frozen_app.executable),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert "client_app.device.runtime" in listing and "client_app.gui.app" in listing
    # Of the local cloud only the package and its stdlib-only connection.json reader ship.
    assert {n for n in listing if n.startswith("client_app.cloud")} <= {
        "client_app.cloud",
        "client_app.cloud.info",
    }
    for excluded in (
        "client_app.pki.cli",
        "client_app.pki.workspace",
        "fastapi",
        "uvicorn",
    ):
        assert not [name for name in listing if name == excluded or name.startswith(excluded + ".")]
    assert not [
        name
        for name in listing
        if name.startswith("PySide6.Qt")
        and name.split(".")[1] not in {"QtCore", "QtGui", "QtWidgets", "QtNetwork"}
    ]


def test_build_carries_the_metadata_diagnostics_report(frozen_app: FrozenApp) -> None:
    """Support diagnostics look versions up by name at run time; each installed package must be found."""

    def normal(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    internal = frozen_app.executable.parent / "_internal"
    bundled = {normal(dist.metadata["Name"]) for dist in metadata.distributions(path=[str(internal)])}
    installed = {normal(dist.metadata["Name"]) for dist in metadata.distributions()}
    wanted = {normal(name) for name in VERSION_PACKAGES} & installed
    assert wanted and wanted <= bundled, wanted - bundled


def test_self_test_passes_with_a_keyring(frozen_app: FrozenApp, keyring_env, tmp_path: Path) -> None:
    result = frozen_app.run(
        "--self-test", "--data-dir", str(tmp_path / "data"), env=_app_env(tmp_path, keyring_env.env)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "self-test passed" in result.stdout
    assert "SecretService" in result.stdout


def test_demo_is_not_in_the_end_user_build(frozen_app: FrozenApp, tmp_path: Path) -> None:
    result = frozen_app.run("--demo", "--status", env=_app_env(tmp_path, {}))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "client-app: --demo is not part of this build; run it from a source checkout"
    )


def test_self_test_names_a_missing_keyring(frozen_app: FrozenApp, tmp_path: Path) -> None:
    result = frozen_app.run("--self-test", "--data-dir", str(tmp_path / "data"), env=_app_env(tmp_path, {}))
    assert result.returncode == 1
    assert "FAIL  keyring: No secure system keyring is available" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def _connected_app(
    frozen_app: FrozenApp, cloud_api, local_cloud, tmp_path: Path, env: dict[str, str], *mode: str
) -> tuple[subprocess.Popen[str], dict]:
    """The frozen app started against the local cloud, and its status once connected."""
    enroll_root(cloud_api, frozen_app.root)
    options = ["--local-cloud", str(local_cloud.info.data_dir), "--data-dir", str(tmp_path / "data")]
    app = subprocess.Popen(
        [str(frozen_app.executable), *mode, *options],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def connected() -> dict | None:
        status = json.loads(frozen_app.run("--status", *options, env=env).stdout)
        return status if status["state"] == "connected" else None

    try:
        return app, wait_for(connected, timeout=60, what="the frozen app to connect")
    except BaseException:
        _terminate(app)
        raise


def _terminate(app: subprocess.Popen[str]) -> str:
    app.send_signal(signal.SIGTERM)
    return app.communicate(timeout=30)[1]


def test_frozen_app_connects_headless(
    frozen_app: FrozenApp, cloud_api, local_cloud, keyring_env, tmp_path: Path
) -> None:
    env = _app_env(tmp_path, keyring_env.env)
    app, status = _connected_app(frozen_app, cloud_api, local_cloud, tmp_path, env, "--headless")
    try:
        devices = cloud_api.devices()
        assert status["device_id"] in json.dumps(devices)

        def reported_version() -> str | None:
            twin = cloud_api.twin(status["device_id"])
            return twin["properties"]["reported"].get("app_version")

        reported = wait_for(reported_version, timeout=30, what="the reported app version")
        assert reported == metadata.version("client-app")
    finally:
        stderr = _terminate(app)
    assert app.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_frozen_window_runs_its_core_in_a_second_process(
    frozen_app: FrozenApp, cloud_api, local_cloud, keyring_env, tmp_path: Path
) -> None:
    """The window starts its device core as `client-app --core-service` of the same bundle."""
    env = _app_env(tmp_path, {**keyring_env.env, "QT_QPA_PLATFORM": "offscreen"})
    app, status = _connected_app(frozen_app, cloud_api, local_cloud, tmp_path, env)
    core = status["pid"]
    try:
        assert core != app.pid
        command = Path(f"/proc/{core}/cmdline").read_bytes().split(b"\0")
        assert command[0] == str(frozen_app.executable).encode() and b"--core-service" in command
    finally:
        stderr = _terminate(app)
    assert app.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert not Path(f"/proc/{core}").exists()
