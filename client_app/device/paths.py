"""Where the app keeps its files: platformdirs by default, relocatable with --data-dir."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP_NAME = "client-app"
ISSUER_BUNDLE_NAME = "issuer-bundle.pem"


def default_data_dir() -> Path:
    return platformdirs.user_data_path(APP_NAME, appauthor=False)


def default_log_dir() -> Path:
    return platformdirs.user_log_path(APP_NAME, appauthor=False)


def default_config_dir() -> Path:
    return platformdirs.user_config_path(APP_NAME, appauthor=False)


def resources_dir() -> Path:
    """resources/ of the installed app: next to the package, or inside a PyInstaller bundle."""
    frozen_root = getattr(sys, "_MEIPASS", None)
    if frozen_root:
        return Path(frozen_root) / "resources"
    return Path(__file__).resolve().parent.parent.parent / "resources"


def default_issuer_bundle() -> Path:
    return resources_dir() / ISSUER_BUNDLE_NAME


@dataclass(frozen=True)
class DataLayout:
    """File names inside the data directory; one place so status/headless/runtime agree."""

    root: Path

    @property
    def identity_dir(self) -> Path:
        return self.root / "identity"

    @property
    def chain_file(self) -> Path:
        return self.identity_dir / "chain.pem"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def database(self) -> Path:
        return self.root / "messages.sqlite3"

    @property
    def status_file(self) -> Path:
        return self.root / "status.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "instance.lock"
