"""Exponential back-off with jitter, capped."""

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

    def next_delay(self) -> float:
        """Delay before the next attempt; never longer than the cap."""
        ceiling = min(self.cap, self.base * self.factor**self.attempts)
        self.attempts += 1
        # Half fixed, half random: spreads a fleet out while still growing steadily.
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.attempts = 0
