"""Diagnostics for support: a text summary and a zip. No Qt here, so it is testable on its own.

Built from an allow-list: named status and configuration fields, version numbers, OS facts and
the tail of the app's own log files. Everything text goes through redact() on the way in:
PEM blocks, tokens, passwords and passphrases, URL credentials and the home directory are removed.
Nothing is read from the data directory (where the identity lives) or from the keyring.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import platform
import re
import sys
import zipfile
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from client_app.cloud.info import SECRET_FIELDS, read_connection_json
from client_app.device.config import DeviceConfig
from client_app.device.status import DeviceStatus
from client_app.pki import atomic_write

# DeviceStatus fields that go in (its to_json_dict promises no secret; this is belt and braces).
STATUS_FIELDS = (
    "state", "message", "retry_at", "registration_id", "device_id", "assigned_hub", "id_scope",
    "provisioning_host", "certificate_subject", "certificate_issuer", "certificate_not_after",
    "certificate_thumbprint", "keyring_backend", "last_connected", "last_disconnected", "last_error",
    "outbox", "inbox", "log_dir",
)  # fmt: skip
CONFIG_FIELDS = (
    "provisioning_host", "id_scope", "proxy", "server_ca_pem", "issuer_bundle", "local_cloud",
    "renew_fraction", "leaf_days", "backoff_cap", "keep_alive", "data_dir", "log_dir", "config_dir",
    "do_not_disturb", "start_at_login",
)  # fmt: skip
VERSION_PACKAGES = (
    "client-app", "PySide6-Essentials", "shiboken6", "azure-iot-device", "paho-mqtt", "cryptography",
    "keyring", "SecretStorage", "platformdirs",
)  # fmt: skip
LOG_NAME = re.compile(r"^[\w.-]+\.log(\.[\w-]+)?$")  # app.log, app.log.1, app.log.2026-11-26
LOG_TAIL_BYTES = 256 * 1024
MAX_LOG_FILES = 5

_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.*?(?:-----END \1-----|\Z)", re.S)
# An END left after _PEM has no BEGIN: the block started in an older (rotated or cut-off) part of the
# log, and the body lines above it may be short enough to pass _LONG_TOKEN. Drop all up to that END.
_PEM_TAIL = re.compile(r"\A.*-----END ([A-Z0-9 ]+)-----", re.S)
# A key that names a secret, also inside a longer name (proxy_password, access_token, clientSecret).
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)(\b\w*?(?:token|password|passwd|passphrase|pass_phrase|secret|api[_-]?key|"
    r"authorization|sharedaccesskey)|\bsig|\bsignature)([\"']?\s*[:=]\s*[\"']?)"
    r"(?:bearer\s+|basic\s+)?[^\s\"',;&)]+"
)
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic|sharedaccesssignature)\s+[^\s\"',;]+")
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]{0,31}://)[^\s/@:]+(?::[^\s/@]*)?@")
# Long runs of base64/base64url/hex: keys, tokens, passphrases. Upper-case hex is kept (thumbprints).
_LONG_TOKEN = re.compile(r"(?<![\w+/=-])[A-Za-z0-9+/_-]{32,}={0,2}(?![\w+/=-])")
_UPPER_HEX = re.compile(r"^[0-9A-F]+$")
# A folder or file name as people write them: lower case (a capital first), digits, dots, dashes. Random
# key material of this length mixes cases within a segment, so it never passes for a path.
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9]?[a-z0-9._-]*$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def redact(text: str, *, secrets: Iterable[str] = (), keep: Iterable[str] = ()) -> str:
    """Remove what may be secret from `text`. `secrets` are known values to remove wherever they
    appear; `keep` are known public values (device id, thumbprint...) never mistaken for tokens."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "[removed]")
    text = _PEM.sub(lambda m: f"[{m.group(1).strip().lower()} removed]", text)
    text = _PEM_TAIL.sub(lambda m: f"[end of a {m.group(1).strip().lower()} removed]", text)
    text = _URL_CREDENTIALS.sub(r"\1[removed]@", text)
    text = _AUTH_SCHEME.sub(r"\1 [removed]", text)
    text = _SECRET_ASSIGNMENT.sub(r"\1\2[removed]", text)
    kept = {k for k in keep if k}

    def token(match: re.Match[str]) -> str:
        value = match.group(0)
        if value in kept or _UPPER_HEX.match(value) or _UUID.match(value) or _looks_like_path(value):
            return value  # public identifiers, message ids, thumbprints and folders stay readable
        return "[token removed]"

    text = _LONG_TOKEN.sub(token, text)
    home = Path.home()
    for path in {str(home), os.path.realpath(home)}:  # /home/me may be a link to /var/home/me
        if len(path) > 1:
            text = text.replace(path, "~")
    return text


def _looks_like_path(value: str) -> bool:
    segments = value.strip("/").split("/")
    return len(segments) > 1 and all(len(seg) < 32 and _PATH_SEGMENT.match(seg) for seg in segments)


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="seconds")
    return str(value)  # Path, ProxySetting (its str never shows the password), enums


def status_fields(status: DeviceStatus) -> dict[str, Any]:
    raw = status.to_json_dict() if hasattr(status, "to_json_dict") else dataclasses.asdict(status)
    return {name: _plain(raw.get(name)) for name in STATUS_FIELDS if name in raw}


def config_fields(config: DeviceConfig) -> dict[str, Any]:
    return {name: _plain(getattr(config, name, None)) for name in CONFIG_FIELDS}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in VERSION_PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def os_facts() -> dict[str, str]:
    return {
        "platform": platform.platform(),
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "frozen": str(bool(getattr(sys, "frozen", False))),
        "desktop": os.environ.get("XDG_CURRENT_DESKTOP", ""),
        "session_type": os.environ.get("XDG_SESSION_TYPE", ""),
    }


def log_files(log_dir: Path | None) -> list[Path]:
    """The app's own log files, newest first; only names that look like logs."""
    if log_dir is None or not Path(log_dir).is_dir():
        return []
    candidates = [p for p in Path(log_dir).iterdir() if p.is_file() and LOG_NAME.match(p.name)]
    candidates.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return candidates[:MAX_LOG_FILES]


def _tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    with path.open("rb") as handle:
        size = handle.seek(0, io.SEEK_END)
        handle.seek(max(0, size - limit))
        data = handle.read()
    text = data.decode("utf-8", errors="replace")
    if size > limit:  # drop the partial first line (it could hold half a PEM marker)
        text = "[earlier lines omitted]\n" + text.split("\n", 1)[-1]
    return text


@dataclasses.dataclass
class Diagnostics:
    """Everything that goes in, gathered once (off the GUI thread: it reads log files)."""

    status: dict[str, Any]
    config: dict[str, Any]
    versions: dict[str, str]
    os: dict[str, str]
    app: dict[str, Any]  # facts from the GUI: Qt version, tray availability, ...
    logs: dict[str, str]  # file name -> redacted tail
    created_at: str

    def summary_text(self) -> str:
        """Short text for "Copy diagnostics": pasted into a support ticket or chat."""
        lines = [f"client-app diagnostics, {self.created_at}"]
        for title, section in (("Status", self.status), ("Versions", self.versions), ("OS", self.os),
                               ("App", self.app), ("Configuration", self.config)):  # fmt: skip
            lines.append(f"\n[{title}]")
            lines.extend(f"{key}: {'' if value is None else value}" for key, value in section.items())
        if self.logs:
            lines.append("\n[Log files]")
            lines.extend(self.logs)
        return "\n".join(lines) + "\n"

    def write_zip(self, path: Path) -> Path:
        """Write the zip atomically (a partial file never appears under the final name)."""
        path = Path(path)
        entries: dict[str, str] = {
            "status.json": json.dumps(self.status, indent=2),
            "config.json": json.dumps(self.config, indent=2),
            "versions.json": json.dumps(self.versions, indent=2),
            "os.json": json.dumps(self.os, indent=2),
            "app.json": json.dumps(self.app, indent=2),
            "summary.txt": self.summary_text(),
        }
        entries.update({f"logs/{name}": text for name, text in self.logs.items()})
        manifest = {
            "created_at": self.created_at,
            "note": "Allow-listed fields and redacted log tails. No keys, certificates' private parts, "
            "tokens or passwords.",
            "files": sorted(entries),
        }
        entries["manifest.json"] = json.dumps(manifest, indent=2)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(entries):
                archive.writestr(name, entries[name])
        atomic_write(path, buffer.getvalue(), 0o600)
        return path


def collect(
    status: DeviceStatus | None,
    config: DeviceConfig,
    *,
    app_facts: Mapping[str, Any] | None = None,
    secrets: Iterable[str] = (),
    include_logs: bool = True,
) -> Diagnostics:
    """Gather and redact. `secrets`: values known to be secret (e.g. a local cloud's API token)."""
    status_dict = status_fields(status) if status is not None else {}
    keep = [str(status_dict.get(k) or "") for k in ("registration_id", "device_id", "certificate_thumbprint")]
    known_secrets = [*secrets, *_local_cloud_secrets(config)]

    def clean(section: Mapping[str, Any]) -> dict[str, Any]:
        return {
            k: redact(v, secrets=known_secrets, keep=keep) if isinstance(v, str) else v
            for k, v in section.items()
        }

    logs: dict[str, str] = {}
    if include_logs:
        for path in log_files(config.log_dir):
            try:
                logs[path.name] = redact(_tail(path), secrets=known_secrets, keep=keep)
            except OSError as exc:
                logs[path.name] = f"[could not read: {exc.strerror}]"
    return Diagnostics(
        status=clean(status_dict),
        config=clean(config_fields(config)),
        versions=versions(),
        os=clean(os_facts()),
        app=clean(dict(app_facts or {})),
        logs=logs,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _local_cloud_secrets(config: DeviceConfig) -> list[str]:
    """A local cloud's API token and shared access keys never leak through a log line that echoed them."""
    local_cloud = getattr(config, "local_cloud", None)
    if not local_cloud:
        return []
    try:
        info = read_connection_json(Path(local_cloud))
    except (OSError, ValueError):
        return []
    values = [str(info[k]) for k in sorted(SECRET_FIELDS) if info.get(k)]  # token, service connection strings
    return values + [
        v.split("SharedAccessKey=", 1)[1].split(";")[0] for v in values if "SharedAccessKey=" in v
    ]


def default_zip_name(now: datetime | None = None) -> str:
    now = now or datetime.now()
    return f"client-app-diagnostics-{now:%Y%m%d-%H%M%S}.zip"
