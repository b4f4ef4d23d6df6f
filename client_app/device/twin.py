"""Device twin: what we report about ourselves, and desired properties applied through callbacks."""

from __future__ import annotations

import logging
import platform
import sys
import threading
from collections.abc import Callable
from typing import Any

from client_app.device.paths import VERSION_FILE, resources_dir

log = logging.getLogger(__name__)

DesiredCallback = Callable[[dict[str, Any]], None]


def app_version() -> str:
    """The installed package's version: the log's start line, About, the support panel, the twin.

    The frozen build has it written at build time (packaging/build.py): importing importlib.metadata costs
    ~13 ms of CPU on the way to the window, for the log's start line."""
    if getattr(sys, "frozen", False):
        try:
            return (resources_dir() / VERSION_FILE).read_text(encoding="utf-8").strip()
        except OSError:
            pass  # a bundle without it: ask the metadata, as from source
    return _package_version("client-app", "0+unknown")


def _package_version(name: str, unknown: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return unknown


def base_reported() -> dict[str, Any]:
    return {
        "app_version": app_version(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "sdk": "azure-iot-device " + _sdk_version(),
    }


def _sdk_version() -> str:
    return _package_version("azure-iot-device", "?")


class Twin:
    """Holds the desired properties seen so far; callbacks get the merged document after each change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._desired: dict[str, Any] = {}
        self._version: int | None = None
        self._callbacks: list[DesiredCallback] = []

    def on_desired(self, callback: DesiredCallback) -> None:
        self._callbacks.append(callback)

    @property
    def desired(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._desired)

    def apply(self, patch: dict[str, Any], *, full: bool = False) -> dict[str, Any] | None:
        """Merge a desired patch (or the full desired document); returns the reported acknowledgement."""
        if not isinstance(patch, dict):
            return None
        version = patch.get("$version")
        with self._lock:
            if full:
                self._desired = {}
            for key, value in patch.items():
                if key.startswith("$"):
                    continue
                if value is None:
                    self._desired.pop(key, None)
                else:
                    self._desired[key] = value
            self._version = version if isinstance(version, int) else self._version
            merged, applied_version = dict(self._desired), self._version
        for callback in list(self._callbacks):
            try:
                callback(merged)
            except Exception:
                log.warning("desired-properties callback failed", exc_info=True)
        return {"desired_applied_version": applied_version}
