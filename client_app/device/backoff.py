"""Exponential back-off with full jitter, capped, honouring a server's retry-after."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    base: float = 1.0
    cap: float = 300.0
    factor: float = 2.0
    attempts: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def next_delay(self, retry_after: float | None = None) -> float:
        """Delay before the next attempt; never shorter than retry-after, never longer than the cap."""
        ceiling = min(self.cap, self.base * self.factor**self.attempts)
        self.attempts += 1
        # Half fixed, half random: spreads a fleet out while still growing steadily.
        delay = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap))
        return delay

    def reset(self) -> None:
        self.attempts = 0
