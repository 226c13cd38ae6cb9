"""Envelope rate limits, one token bucket for both ends: the server refuses what finds its bucket empty, the client
waits for its own bucket (set from the server's Welcome) so that it is never refused. Refills continuously from the
monotonic clock: no timers, no polling."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` held; starts full."""

    def __init__(self, rate: float, burst: int):
        self.rate = rate
        self.capacity = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self) -> bool:
        """One token if there is one (the server's check of an incoming envelope)."""
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Pacer(TokenBucket):
    """The sending side's bucket: :meth:`wait` holds an envelope back until its token has refilled, so that none of
    this side's messages is refused for its rate."""

    def __init__(self, rate: float, burst: int):
        if rate <= 0 or burst < 1:
            raise ValueError(f"a pacer needs a positive rate and a burst of at least 1, got {rate} and {burst}")
        super().__init__(rate, burst)
        self.waited = 0.0  # seconds spent waiting for the rate, for figures and tests

    async def wait(self) -> None:
        """Waits until one envelope may go (the wait is the exact time its token takes to refill), and takes it."""
        if self.take():
            return
        delay = (1.0 - self.tokens) / self.rate
        await asyncio.sleep(delay)
        self.waited += delay
        self.tokens, self.stamp = 0.0, time.monotonic()  # the refilled token, spent on this envelope
