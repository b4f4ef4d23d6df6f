"""`client-app --self-test`: check that an installed (or frozen) app has every part it needs.

Each check prints one line; the exit code is 0 only when all pass. Nothing touches the network and
nothing secret is printed or written: the throw-away key lives in memory, in a temporary file the SDK
reads once (encrypted), and for a moment in the keyring, which is cleaned up again.
"""

from __future__ import annotations

import os
import secrets
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from client_app.device.config import DeviceConfig

if TYPE_CHECKING:  # the checks import lazily, so that one missing part fails one check only
    from cryptography import x509

    from client_app.pki import CertificateAuthority, PrivateKey

Check = Callable[[DeviceConfig], str]


def _qt(config: DeviceConfig) -> str:
    os.environ["QT_QPA_PLATFORM"] = "offscreen"  # a self-test must run without a display
    from PySide6.QtCore import qVersion
    from PySide6.QtWidgets import QApplication, QSystemTrayIcon

    app = QApplication.instance() or QApplication(["client-app", "-platform", "offscreen"])
    return f"Qt {qVersion()} on {app.platformName()}, tray messages {QSystemTrayIcon.supportsMessages()}"


def _tls(config: DeviceConfig) -> str:
    paths = ssl.get_default_verify_paths()
    roots = [p for p in (paths.cafile, paths.capath) if p and Path(p).exists()]
    if not roots:
        raise RuntimeError("no system CA certificates found: real Azure endpoints could not be verified")
    return f"{ssl.OPENSSL_VERSION}, system CAs at {', '.join(roots)}"


def _leaf_from_issuer(config: DeviceConfig) -> tuple[CertificateAuthority, PrivateKey, x509.Certificate]:
    from client_app.pki import generate_key, load_issuer_bundle

    issuer = load_issuer_bundle(config.issuer_bundle_path)
    key = generate_key()
    leaf = issuer.issue_device(f"self-test-{secrets.token_hex(4)}", key.public_key(), days=1)
    return issuer, key, leaf


def _issuer(config: DeviceConfig) -> str:
    issuer, _, leaf = _leaf_from_issuer(config)
    return f"{config.issuer_bundle_path}: issued {leaf.subject.rfc4514_string()} under {issuer.common_name}"


def _sdk(config: DeviceConfig) -> str:
    """Create (never connect) a hub client: loads the TLS context, the certificate and the key."""
    from azure.iot.device import X509, IoTHubDeviceClient

    from client_app.device.identity import sdk_key_file
    from client_app.pki import certificate_to_pem

    _, key, leaf = _leaf_from_issuer(config)
    with tempfile.TemporaryDirectory(prefix="client-app-selftest-") as tmp:
        chain = Path(tmp) / "chain.pem"
        chain.write_bytes(certificate_to_pem(leaf))
        with sdk_key_file(key) as (key_path, passphrase):
            client = IoTHubDeviceClient.create_from_x509_certificate(
                X509(str(chain), key_path, passphrase), hostname="self-test.invalid", device_id="self-test"
            )
    client.shutdown()
    return "azure-iot-device MQTT/TLS client created"


def _keyring(config: DeviceConfig) -> str:
    from client_app.device import secrets as device_secrets
    from client_app.pki import generate_key

    registration_id = f"self-test-{secrets.token_hex(4)}"
    device_secrets.store_key(registration_id, generate_key())
    try:
        device_secrets.load_key(registration_id)
    finally:
        device_secrets.delete_key(registration_id)
    return device_secrets.backend_name()


CHECKS: dict[str, Check] = {
    "qt": _qt,
    "tls": _tls,
    "issuer bundle": _issuer,
    "device sdk": _sdk,
    "keyring": _keyring,
}


def run(config: DeviceConfig) -> int:
    failures = 0
    for name, check in CHECKS.items():
        try:
            print(f"ok    {name}: {check(config)}", flush=True)
        except Exception as exc:  # every failure is reported, none stops the others
            failures += 1
            print(f"FAIL  {name}: {exc}", flush=True)
    print("self-test passed" if not failures else f"self-test failed: {failures} check(s)")
    return 1 if failures else 0
