"""Direct methods: a small registry mapping method names to handlers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

MethodHandler = Callable[[Any], tuple[int, Any]]  # payload -> (status, response payload)


class MethodRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, MethodHandler] = {}

    def register(self, name: str, handler: MethodHandler) -> None:
        self._handlers[name] = handler

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def invoke(self, name: str, payload: Any) -> tuple[int, Any]:
        handler = self._handlers.get(name)
        if handler is None:
            return 404, {"error": f"unknown method {name!r}", "methods": self.names()}
        try:
            return handler(payload)
        except Exception as exc:  # a faulty handler answers 500 instead of leaving the caller hanging
            log.warning("method %s failed: %s", name, exc.__class__.__name__, exc_info=True)
            return 500, {"error": f"{exc.__class__.__name__}: {exc}"}
