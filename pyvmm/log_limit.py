"""`LogLimit`: log lines a guest can trigger, held to a few per second.

Anything a guest does over and over (reset a device with a bad status sequence, post
a broken ring, fault a queue) must not turn into one host log line each: 20,000 resets
would be 20,000 lines. Each `LogLimit` lets `burst` lines through, then one more per
`interval` seconds (a token bucket); what it holds back is counted and said in the
next line it lets through ("... (1,234 more like this suppressed)"). One `LogLimit`
per kind of message and device, so a noisy device does not silence another.
"""

from __future__ import annotations

import logging
import threading
import time


class LogLimit:
    """At most `burst` lines at once, then one per `interval` seconds (thread-safe)."""

    def __init__(self, logger: logging.Logger, *, burst: int = 3, interval: float = 1.0) -> None:
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self.suppressed = 0  # lines held back since the last one logged
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()  # a leaf: taken with any device lock held

    def log(self, level: int, message: str, *args: object) -> bool:
        """Log `message % args` at `level` if the budget allows; whether it did."""
        if not self.logger.isEnabledFor(level):
            return False
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) / self.interval)
            self._last = now
            if self._tokens < 1:
                self.suppressed += 1
                return False
            self._tokens -= 1
            suppressed, self.suppressed = self.suppressed, 0
        if suppressed:
            message += f" ({suppressed:,} more like this suppressed)"
        self.logger.log(level, message, *args)
        return True

    def warning(self, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, message, *args)
