"""Device-core fixtures: a throw-away issuing CA and an isolated configuration per test."""

from __future__ import annotations

import gc
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from client_app.device.config import DeviceConfig
from client_app.pki import CertificateAuthority, write_issuer_bundle


@pytest.fixture(scope="session")
def issuing_ca() -> CertificateAuthority:
    return CertificateAuthority.root("device-test Root").intermediate("device-test Issuing CA")


@pytest.fixture
def bundle_path(tmp_path: Path, issuing_ca: CertificateAuthority) -> Path:
    path = tmp_path / "issuer-bundle.pem"
    write_issuer_bundle(issuing_ca, path)
    return path


@pytest.fixture
def device_config(tmp_path: Path, bundle_path: Path) -> DeviceConfig:
    data = tmp_path / "data"
    return DeviceConfig(
        id_scope="0ne-test",
        issuer_bundle=bundle_path,
        data_dir=data,
        log_dir=data / "logs",
        config_dir=data / "config",
        backoff_cap=2.0,
    )


@pytest.fixture
def app_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """(data dir, private temp dir) for an app under test; afterwards neither may hold a plaintext key."""
    from tests.device.e2e import plaintext_keys

    data, temp = tmp_path / "app", tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # this process
    monkeypatch.setenv("TMPDIR", str(temp))  # child processes
    yield data, temp
    gc.collect()  # SDK objects are reference cycles: leaked sockets would surface (as errors) here
    gc.freeze()  # what survived is live: later collections scan only what later tests make
    assert plaintext_keys(data, temp) == []
    assert list(temp.glob("client-app-*")) == []  # temporary key files are gone, too


@pytest.fixture
def user_env(keyring_env, app_dirs, tmp_path) -> dict[str, str]:
    """A fresh user profile: HOME/XDG relocate every platformdirs path; keyring_env is the Secret Service."""
    home = tmp_path / "home"
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_STATE_HOME": str(home / ".local/state"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "CLIENT_APP_BACKOFF_CAP": "2",
    }
    env.pop("CLIENT_APP_DATA_DIR", None)
    return env
