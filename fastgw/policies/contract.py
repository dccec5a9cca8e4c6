"""What a route policy answers: the types every policy and the chain share (declared once here).

A policy's ``check(exchange)`` returns None (go on), a `Rejection` ``(status, slug, detail bytes | None,
extra header lines bytes | None)``, or an awaitable resolving to one of those; the exchange's interface is
in fastgw/_core/proxy.pyx ("policy interface"). A policy derives from fastgw._core.gates.Gate, so the
compiled Chain calls its `check` from C.
"""
from __future__ import annotations

from collections.abc import Awaitable

Rejection = tuple[int, str, bytes | None, bytes | None]
Result = Rejection | Awaitable[Rejection | None] | None
