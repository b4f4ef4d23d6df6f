"""Device twin: what we report about ourselves, and desired properties applied through callbacks."""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

DesiredCallback = Callable[[dict[str, Any]], None]


def app_version() -> str:
    """The installed package's version: the log's start line, About, the support panel, the twin."""
    try:
        return importlib.metadata.version("client-app")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def base_reported() -> dict[str, Any]:
    return {
        "app_version": app_version(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "sdk": "azure-iot-device " + _sdk_version(),
    }


def _sdk_version() -> str:
    try:
        return importlib.metadata.version("azure-iot-device")
    except importlib.metadata.PackageNotFoundError:
        return "?"


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
