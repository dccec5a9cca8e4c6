"""Durations and sizes as they are written in the config file.

Durations: a non-negative decimal number and a unit, no space: "250ms", "10s", "1.5s", "1m", "1h".
A bare number is refused because "10" could mean seconds or milliseconds, and the config should not
make the reader guess. Sizes: a non-negative decimal number and an optional unit: "512" and "512B" are
bytes, "8KB" is 8 * 10^3 bytes (SI), "32KiB" is 32 * 2^10 bytes (IEC). A TOML integer is a size in
bytes. Units are case-sensitive because "Mb" (megabit) and "MB" (megabyte) differ; the error lists
the valid spellings.
"""
from __future__ import annotations

import re
from decimal import Decimal

DURATION_UNITS: dict[str, Decimal] = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}
SIZE_UNITS: dict[str, int] = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
}

# A sign is captured so "-5s" is reported as negative rather than as malformed.
_QUANTITY = re.compile(r"(-?)(\d+(?:\.\d+)?)([A-Za-z]*)")
_DURATION_HINT = '(use e.g. "250ms", "10s", "1m", "1h")'
# The unit spellings are listed in the module docstring and the example config; the hint stays short.
_SIZE_HINT = '(use e.g. "512KiB", "1MiB")'


def parse_duration(text: str) -> float:
    """Parse "250ms" / "10s" / "1.5s" / "1m" / "1h" into seconds. Raises ValueError with the reason."""
    if not isinstance(text, str) or isinstance(text, bool):
        raise ValueError(f"invalid duration {text!r}: expected a string {_DURATION_HINT}")
    shown = _quote(text)
    if not text:
        raise ValueError(f"invalid duration {shown}: empty {_DURATION_HINT}")
    m = _QUANTITY.fullmatch(text)
    if m is None:
        raise ValueError(f"invalid duration {shown} {_DURATION_HINT}")
    sign, number, unit = m.groups()
    if sign == "-" and Decimal(number) != 0:
        raise ValueError(f"invalid duration {shown}: must not be negative")
    if not unit:
        raise ValueError(f"invalid duration {shown}: missing unit (ms, s, m or h) {_DURATION_HINT}")
    factor = DURATION_UNITS.get(unit)
    if factor is None:
        raise ValueError(f"invalid duration {shown} {_DURATION_HINT}")
    return float(Decimal(number) * factor)


def parse_size(value: str | int) -> int:
    """Parse "512" / "512B" / "8KB" / "32KiB" / "1.5MiB" (or an int of bytes) into bytes."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}: expected a string or an integer {_SIZE_HINT}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {value}: must not be negative")
        return value
    if not isinstance(value, str):
        raise ValueError(f"invalid size {value!r}: expected a string or an integer {_SIZE_HINT}")
    shown = _quote(value)
    if not value:
        raise ValueError(f"invalid size {shown}: empty {_SIZE_HINT}")
    m = _QUANTITY.fullmatch(value)
    if m is None:
        raise ValueError(f"invalid size {shown} {_SIZE_HINT}")
    sign, number, unit = m.groups()
    if sign == "-" and Decimal(number) != 0:
        raise ValueError(f"invalid size {shown}: must not be negative")
    factor = SIZE_UNITS.get(unit or "B")
    if factor is None:
        raise ValueError(f"invalid size {shown} {_SIZE_HINT}")
    total = Decimal(number) * factor
    # A fraction of a byte has no meaning; "1.5KiB" (1536) is fine, "0.5B" is not.
    if total != total.to_integral_value():
        raise ValueError(f"invalid size {shown}: not a whole number of bytes")
    return int(total)


def _quote(text: str) -> str:
    """Show the user's text in double quotes, as it appears in TOML (escapes only if needed)."""
    r = repr(text)
    return '"' + r[1:-1].replace('"', '\\"') + '"' if r[0] == "'" else r


# Rates and quotas: "<count>/<unit>". A rate is a token bucket refilled evenly ("100/s", "6000/min");
# a quota is a count per UTC calendar window ("10000/day", "1000000/month"). One spelling per rate unit,
# the documented one: "100/m" could be read as per month (a quota window), and a second spelling of each
# unit would only be a second thing to document.
RATE_UNITS: dict[str, int] = {"s": 1, "min": 60, "h": 3600, "day": 86400}
_RATE_SPELLING = {"sec": "s", "second": "s", "m": "min", "minute": "min", "hour": "h", "d": "day"}
QUOTA_WINDOWS = ("minute", "hour", "day", "month")
_RATE = re.compile(r"(\d+)/([a-z]+)")


def parse_rate(text: str) -> tuple[int, int]:
    """"100/s" -> (100, 1); "6000/min" -> (6000, 60): (count, period in seconds)."""
    m = _RATE.fullmatch(text)
    if m is None or m[2] not in RATE_UNITS:
        hint = f' (the unit is "{_RATE_SPELLING[m[2]]}")' if m is not None and m[2] in _RATE_SPELLING else ""
        raise ValueError(f'invalid rate {_quote(text)}{hint} (use "<count>/<s|min|h|day>", e.g. "100/s", "6000/min")')
    count = int(m[1])
    if count < 1:
        raise ValueError(f"invalid rate {_quote(text)}: the count must be at least 1")
    period = RATE_UNITS[m[2]]
    if count > 1_000_000 * period:
        raise ValueError(f"invalid rate {_quote(text)}: at most 1000000/s")
    return count, period


def parse_quota(text: str) -> tuple[int, str]:
    """"10000/day" -> (10000, "day"): (count, UTC calendar window: minute, hour, day or month)."""
    m = _RATE.fullmatch(text)
    if m is None or m[2] not in QUOTA_WINDOWS:
        raise ValueError(f'invalid quota {_quote(text)} (use "<count>/<minute|hour|day|month>", e.g. "10000/day")')
    count = int(m[1])
    if count < 1:
        raise ValueError(f"invalid quota {_quote(text)}: the count must be at least 1")
    if count >= 2**40:
        raise ValueError(f"invalid quota {_quote(text)}: too large")
    return count, m[2]
