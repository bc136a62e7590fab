"""Time, injected: wall-clock time for token expiry, a monotonic clock for deadlines.

Everything that waits or compares times takes a ``Clock`` so tests can drive time
by hand instead of sleeping.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (token expiry is absolute UTC time)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (deadlines)."""

    def sleep(self, seconds: float) -> None:
        """Wait (retry back-off)."""


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


@dataclass(frozen=True)
class Deadline:
    """The point by which the whole request must be answered."""

    clock: Clock
    at: float

    @classmethod
    def after(cls, clock: Clock, seconds: float) -> Deadline:
        return cls(clock, clock.monotonic() + seconds)

    def remaining(self) -> float:
        return self.at - self.clock.monotonic()
