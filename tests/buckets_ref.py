"""A pure-Python twin of fastgw/_core/buckets.pyx, written from the rules, for differential tests.

Rate: a token bucket kept as tokens and a last-refill time, with exact rational arithmetic (Fraction), so
it checks the GCRA formulation in buckets.pyx against the textbook one rather than against itself.
Quota: a count per UTC calendar window (datetime arithmetic). Keys never collide and never get evicted.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction

NS = 1_000_000_000


class RefRate:
    def __init__(self, interval: int, burst: int) -> None:
        self.interval = interval
        self.burst = burst
        self.buckets: dict[int, tuple[Fraction, int]] = {}

    def take(self, key: int, now: int, n: int = 1, commit: bool = True) -> tuple[bool, int, int, int]:
        tokens, last = self.buckets.get(key, (Fraction(self.burst), now))
        if now > last:
            tokens = min(Fraction(self.burst), tokens + Fraction(now - last, self.interval))
            last = now
        # Requests at a time before `last` (time never goes back here) see the same tokens.
        # The third value is the time until the next whole token (more quota made available: the `t` of
        # draft-ietf-httpapi-ratelimit-headers-10 §4.1.2), the fourth, when refused, until n tokens are there.
        if tokens >= n:
            tokens -= n
            if commit:
                self.buckets[key] = (tokens, last)
            return True, int(tokens), _ceil(_next_token(tokens) * self.interval), 0
        if commit:
            self.buckets[key] = (tokens, last)
        need = (n - tokens) * self.interval
        return False, int(tokens), _ceil(_next_token(tokens) * self.interval), _ceil(need)


def _next_token(tokens: Fraction) -> Fraction:
    """Tokens still to accrue before the bucket holds one more whole token."""
    return int(tokens) + 1 - tokens


def _ceil(x: Fraction) -> int:
    return -((-x.numerator) // x.denominator)


def window_end(kind: str, wall: int) -> int:
    t = datetime.fromtimestamp(wall // NS, UTC)
    if kind == "minute":
        start = t.replace(second=0, microsecond=0)
        end = start + timedelta(minutes=1)
    elif kind == "hour":
        end = t.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    elif kind == "day":
        end = t.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    else:
        first = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = first.replace(year=first.year + 1, month=1) if first.month == 12 else first.replace(month=first.month + 1)
    return int(end.timestamp()) * NS


class RefQuota:
    def __init__(self, kind: str, limit: int) -> None:
        self.kind = kind
        self.limit = limit
        self.counts: dict[int, tuple[int, int]] = {}

    def take(self, key: int, wall: int, n: int = 1) -> tuple[bool, int, int, int]:
        end = window_end(self.kind, wall)
        w, c = self.counts.get(key, (end, 0))
        if w != end:
            c = 0
        if c + n > self.limit:
            self.counts[key] = (end, c)
            return False, max(0, self.limit - c), end - wall, end - wall
        self.counts[key] = (end, c + n)
        return True, self.limit - c - n, end - wall, 0
