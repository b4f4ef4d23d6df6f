"""`client-app --demo`: an embedded local cloud, a demo CA and an enrollment group, then the app.

Everything lives under the user's data directory and is reused on the next run:

    <data>/demo-cloud/    the local cloud's --data dir (connection.json, its SQLite store, its TLS CA)
    <data>/demo-ca/       demo root + issuing intermediate (keys encrypted) and the issuer bundle
    <data>/demo-device/   the demo instance's own data (identity, messages, logs, config.toml),
                          so the demo never touches a real installation's identity

Each setup step checks what exists first, so a second run changes nothing and connects at once.
CLIENT_APP_DEMO_DIR moves the whole tree elsewhere (tests, screenshots).
"""

from __future__ import annotations

import atexit
import logging
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from azure.core.exceptions import AzureError

from client_app.cloud.info import ConnectionInfo, read_connection_json
from client_app.cloud.service.client import ServiceClient, ServiceError
from client_app.device import paths
from client_app.device.instance_lock import running_pid
from client_app.pki import (
    ISSUER_BUNDLE_PASSPHRASE,
    CertificateAuthority,
    load_issuer_bundle,
    sha1_thumbprint,
    write_issuer_bundle,
)
from client_app.pki.workspace import Workspace

log = logging.getLogger(__name__)

DEMO_DIR_ENV = "CLIENT_APP_DEMO_DIR"
ROOT_CERTIFICATE_NAME = "demo-root"
ENROLLMENT_GROUP = "demo-group"
# Demo only: the demo CA's keys are encrypted with the public built-in bundle passphrase.
DEMO_CA_PASSPHRASE = ISSUER_BUNDLE_PASSPHRASE

_running_cloud: Any = None  # RunningCloud of this process; stopped at exit


class DemoError(Exception):
    """A demo setup step failed; the message says which and why in one line."""


def demo_root() -> Path:
    override = os.environ.get(DEMO_DIR_ENV)
    return Path(override).expanduser() if override else paths.default_data_dir()


def cloud_dir(root: Path | None = None) -> Path:
    return (root or demo_root()) / "demo-cloud"


def ca_dir(root: Path | None = None) -> Path:
    return (root or demo_root()) / "demo-ca"


def device_dir(root: Path | None = None) -> Path:
    return (root or demo_root()) / "demo-device"


def bundle_path(root: Path | None = None) -> Path:
    return ca_dir(root) / "issuer-bundle.pem"


# --- demo CA -------------------------------------------------------------------------------------


def ensure_demo_ca(directory: Path) -> tuple[CertificateAuthority, CertificateAuthority, Path]:
    """Root and issuing CA (created once), and the issuer bundle the app issues its leaf from."""
    workspace = Workspace(directory)
    if not workspace.cert_path("root").exists():
        log.info("creating the demo CA in %s", directory)
        Workspace.create(directory, intermediates=1, passphrase=DEMO_CA_PASSPHRASE)
    root = workspace.load_ca("root", DEMO_CA_PASSPHRASE)
    issuing = workspace.load_ca(workspace.issuing_name, DEMO_CA_PASSPHRASE)
    bundle = directory / "issuer-bundle.pem"
    if not _bundle_matches(bundle, issuing):
        write_issuer_bundle(issuing, bundle)
    return root, issuing, bundle


def _bundle_matches(bundle: Path, issuing: CertificateAuthority) -> bool:
    if not bundle.exists():
        return False
    try:
        existing = load_issuer_bundle(bundle)
    except Exception:
        return False
    return sha1_thumbprint(existing.certificate) == sha1_thumbprint(issuing.certificate)


# --- local cloud ---------------------------------------------------------------------------------


def start_cloud(directory: Path) -> Any:
    """Start the local cloud in this process (its own thread); stopped when the process exits."""
    global _running_cloud
    from client_app.cloud.server import CloudSettings, start_in_thread

    if _running_cloud is None:
        directory.mkdir(parents=True, exist_ok=True)
        _running_cloud = start_in_thread(CloudSettings(data_dir=directory))
        atexit.unregister(stop_cloud)  # once, however often the demo menu restarts it
        atexit.register(stop_cloud)
    return _running_cloud


def stop_cloud() -> None:
    global _running_cloud
    cloud, _running_cloud = _running_cloud, None
    if cloud is not None:
        cloud.stop()


class CloudSwitch:
    """The demo window's Demo menu: stop and start the embedded local cloud, for a fault drill.

    Started again, it may listen on new ports: the device core re-reads connection.json on each attempt."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def running(self) -> bool:
        return _running_cloud is not None

    def stop(self) -> None:
        stop_cloud()

    def start(self) -> None:
        start_cloud(self.directory)


def cloud_switch() -> CloudSwitch | None:
    """A switch for the cloud this process runs; None when another process runs it."""
    return CloudSwitch(cloud_dir()) if _running_cloud is not None else None


def connection_info(directory: Path) -> dict[str, Any]:
    return read_connection_json(directory)


class OperatorApi:
    """What the demo sets up, through the operator client (Azure's service API and ARM, as against Azure)."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.client = ServiceClient.for_local_cloud(ConnectionInfo.from_json(info), timeout=15)

    def close(self) -> None:
        self.client.close()

    def _do(self, what: str, work: Callable[[], Any]) -> Any:
        try:
            return work()
        except (ServiceError, AzureError) as exc:
            raise DemoError(f"the local cloud refused to {what}: {str(exc).splitlines()[0]}") from exc

    def ensure_verified_root(self, root: CertificateAuthority) -> None:
        """Upload the root once and prove possession of its key (idempotent)."""
        arm = self.client.certificates
        assert arm is not None  # the local cloud's ARM endpoint
        name = ROOT_CERTIFICATE_NAME
        existing = next((c for c in self._do("list certificates", arm.list) if c.name == name), None)
        same = existing is not None and (existing.properties.thumbprint or "").upper() == sha1_thumbprint(
            root.certificate
        )
        if same and existing.properties.is_verified:
            return
        if existing is not None:  # another demo root, or never verified: start it again
            self._do("delete the old demo root", lambda: arm.delete(name))
        self._do("verify the demo root", lambda: arm.enroll(root, name))

    def ensure_enrollment_group(self) -> None:
        groups = self._do("list enrollment groups", self.client.groups)
        group = next((g for g in groups if g.get("enrollmentGroupId") == ENROLLMENT_GROUP), None)
        attestation = {"type": "x509", "x509": {"caReferences": {"primary": ROOT_CERTIFICATE_NAME}}}
        if group is None:
            group = self._do(
                "create the demo group",
                lambda: self.client.create_group(ENROLLMENT_GROUP, ROOT_CERTIFICATE_NAME),
            )
        policy = {**group.get("identityPolicy", {}), "requireSelfCertifyingId": True}  # docs/pki.md
        if (
            group.get("attestation") != attestation
            or group.get("provisioningStatus") != "enabled"
            or group.get("identityPolicy") != policy
        ):
            fixed = {
                **group,
                "attestation": attestation,
                "provisioningStatus": "enabled",
                "identityPolicy": policy,
            }
            self._do("repair the demo group", lambda: self.client.replace_group(fixed))


def setup_demo(root: Path | None = None, *, start: bool = True) -> tuple[Path, Path]:
    """Make sure the demo CA, local cloud, verified root and enrollment group exist.

    Returns (local cloud dir, issuer bundle). With start=False nothing is started or changed.
    """
    root = root or demo_root()
    cloud = cloud_dir(root)
    if not start:
        return cloud, bundle_path(root)
    try:
        root_ca, _issuing, bundle = ensure_demo_ca(ca_dir(root))
    except Exception as exc:  # e.g. a key file damaged or re-encrypted by hand
        raise DemoError(_start_afresh(f"the demo CA cannot be used ({exc})", ca_dir(root))) from exc
    try:
        start_cloud(cloud)
    except Exception as exc:  # e.g. its database damaged by a crash
        raise DemoError(_start_afresh(f"the embedded local cloud did not start ({exc})", cloud)) from exc
    api = OperatorApi(connection_info(cloud))
    try:
        api.ensure_verified_root(root_ca)
        api.ensure_enrollment_group()
    except ServiceError as exc:
        raise DemoError(f"the local cloud's service API did not answer: {exc}") from exc
    finally:
        api.close()
    return cloud, bundle


def _start_afresh(problem: str, directory: Path) -> str:
    """The one fix a demo user can apply: everything under the demo directory is made again if missing."""
    return f"{problem}. To start over with a new one, delete {directory} and run client-app --demo again."


def command_for(script: str, module: str) -> list[str]:
    """A command that runs from any directory: the installed script by its absolute path (next to this
    Python, as a virtual environment or an install lays them out), else this Python with the module."""
    installed = Path(sys.executable).parent / (script + (".exe" if os.name == "nt" else ""))
    return [str(installed)] if installed.is_file() else [sys.executable, "-m", module]


def demo_hints(cloud: Path, demo_dir: Path) -> list[str]:
    """Commands to try from another terminal, in this shell's quoting."""
    cloud_cli = [*command_for("client-app-cloud", "client_app.cloud.cli"), "--data", str(cloud)]
    app = command_for("client-app", "client_app.main")
    env = f"{DEMO_DIR_ENV}={shlex.quote(str(demo_dir))} " if os.environ.get(DEMO_DIR_ENV) else ""
    return [
        shlex.join([*cloud_cli, "devices", "list"]),
        shlex.join([*cloud_cli, "send", "DEVICE-ID", "hello"]),
        shlex.join([*cloud_cli, "telemetry", "--follow"]),
        env + shlex.join([*app, "--demo", "--status"]),
    ]


def _print_banner(cloud: Path, device_data: Path) -> None:
    info = connection_info(cloud)
    lines = [
        "client-app demo: an embedded local cloud runs inside this app until you quit it.",
        f"  local cloud data dir: {cloud}",
        f"  demo device data dir: {device_data}",
        f"  ID scope {info.get('id_scope')}, service API https://{info.get('service_host')}",
        "Try from another terminal, in any folder (DEVICE-ID is under Help > Connection details):",
        *(f"  {hint}" for hint in demo_hints(cloud, demo_root())),
        "Demo > Stop the local cloud (in the window) takes the cloud away for a fault drill.",
    ]
    print("\n".join(lines), flush=True)


def device_layer(data_dir: str | None) -> dict[str, Any]:
    """The demo instance's own data dir unless --data-dir was given: a real install stays untouched."""
    return {} if data_dir else {"data_dir": str(device_dir(demo_root()))}


def prepare_demo(data_dir: Path, *, status_only: bool = False) -> dict[str, Any]:
    """Set up (or, for --status, only locate) the demo; returns its configuration layer.

    The layer names the local cloud and the issuer bundle; the ConfigStore puts it above the environment
    and below the command line, so `--demo --issuer-bundle X` still uses X."""
    root = demo_root()
    # A demo instance already running owns the embedded cloud: a second launch only brings its
    # window forward (single instance), and must not start a second cloud on the same directory.
    already_running = running_pid(paths.DataLayout(Path(data_dir)).lock_file) is not None
    locate_only = status_only or already_running
    try:
        cloud, bundle = setup_demo(root, start=not locate_only)
    except DemoError:
        stop_cloud()
        raise
    except Exception as exc:  # logged with its traceback by the caller, which reports the one line
        stop_cloud()
        raise DemoError(f"the demo could not be set up: {exc}") from exc
    if not locate_only:
        _print_banner(cloud, Path(data_dir))
    elif already_running and not status_only:
        print(f"client-app demo is already running (local cloud data dir: {cloud}).", flush=True)
    layer: dict[str, Any] = {"issuer_bundle": str(bundle)}
    # `--demo --status` before the demo ever ran: there is no cloud to read yet, only a status to print.
    if cloud.is_dir() or not status_only:
        layer["local_cloud"] = str(cloud)
    return layer


if __name__ == "__main__":  # pragma: no cover - manual use: set up the demo without the app
    logging.basicConfig(level=logging.INFO)
    directory, issuer = setup_demo()
    print(f"demo local cloud running, data dir {directory}, issuer bundle {issuer}; Ctrl-C to stop")
    try:
        import threading

        threading.Event().wait()
    except KeyboardInterrupt:
        sys.exit(0)
