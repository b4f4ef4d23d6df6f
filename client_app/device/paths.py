"""Where the app keeps its files: platformdirs by default, relocatable with --data-dir."""

from __future__ import annotations

import logging
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import platformdirs

log = logging.getLogger(__name__)

APP_NAME = "client-app"
ISSUER_BUNDLE_NAME = "issuer-bundle.pem"
VERSION_FILE = "version.txt"  # in a frozen build's resources/: the app's version, written at build time


def private_dir(path: Path) -> Path:
    """Create `path` (or tighten an existing one) so only this user may enter it: 0700.

    The data, log and config directories hold messages, logs and status other local users have no business
    reading; files inside are written 0600 as well (no reliance on the umask). An existing directory that is
    clearly not the app's own (someone else's, a sticky shared one like /tmp, the home directory) is left as
    it is: --data-dir or --log-dir may point anywhere.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.name == "nt":
        return path
    info = path.stat()
    if (
        info.st_mode & 0o077
        and info.st_uid == os.getuid()
        and not info.st_mode & stat.S_ISVTX
        and path.resolve() != Path.home().resolve()
    ):
        path.chmod(0o700)
        log.info("made %s private to this user (0700)", path)
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty if missing, and make it 0600 (e.g. a database before SQLite opens it)."""
    private_dir(path.parent)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    if os.name != "nt":
        path.chmod(0o600)
    return path


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
