"""Log a repeating event once per interval, with a count of what was left out, instead of once per event.

A flood (thousands of half-open connections, a device re-sending a refused SUBSCRIBE, accept() failing at fd
exhaustion) must cost a few log lines, not megabytes of them and the event-loop time to write them.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

MAX_KEYS = 1024  # distinct event kinds remembered; the least recently logged is forgotten first


class RateLimitedLog:
    def __init__(
        self, log: logging.Logger, interval: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = log
        self.interval = interval
        self._clock = clock
        self._last: OrderedDict[str, tuple[float, int]] = OrderedDict()  # key → (last logged, suppressed)

    def log(self, level: int, key: str, message: str, *args: object, exc_info: object = None) -> bool:
        """Log `message` unless `key` was logged within the interval; True when it was written."""
        now = self._clock()
        last, suppressed = self._last.get(key, (float("-inf"), 0))
        if now - last < self.interval:
            self._last[key] = (last, suppressed + 1)
            return False
        if suppressed:
            message += " (%d more like it in the last %.0f s)"
            args = (*args, suppressed, now - last)
        self._log.log(level, message, *args, exc_info=exc_info)  # type: ignore[arg-type]
        self._last[key] = (now, 0)
        self._last.move_to_end(key)
        while len(self._last) > MAX_KEYS:
            self._last.popitem(last=False)
        return True
