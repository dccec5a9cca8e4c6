"""The admin listener: GET /healthz, /readyz and /metrics, served by the supervisor (never by a worker,
never on a public listener), and the actions policies register (PURGE/DELETE /cache, GET /usage; an action may await).

A deliberately small HTTP/1.1 server: one request per connection (answered with Connection: close),
a head of at most 8 KiB read within 5 s, no request body. GET and HEAD on the read-only paths; an action's
path takes only the methods it names (its arguments are in the query).
"""
from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

MAX_HEAD = 8192
HEAD_TIMEOUT = 5.0

Handler = Callable[[], tuple[int, str, str]]   # -> (status, content type, body)
# (method, query string) -> (status, content type, body)
Action = tuple[frozenset[str], Callable[[str, str], tuple[int, str, str] | Awaitable[tuple[int, str, str]]]]

REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}
TEXT = "text/plain; charset=utf-8"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


class AdminServer:
    def __init__(self, routes: dict[str, Handler], actions: dict[str, Action] | None = None) -> None:
        self.routes = routes
        self.actions = actions or {}
        self.server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self.server = await asyncio.start_server(self.handle, host, port, limit=MAX_HEAD * 2)
        sockname = self.server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, ctype, body, head_only = await self.respond(reader)
            payload = body.encode()
            writer.write(
                f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(payload)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n".encode()
                + (b"" if head_only else payload))
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def respond(self, reader: asyncio.StreamReader) -> tuple[int, str, str, bool]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except TimeoutError:
            return 408, TEXT, "request head not received in time\n", False
        except asyncio.LimitOverrunError:
            return 431, TEXT, "request head too large\n", False
        except asyncio.IncompleteReadError:
            return 400, TEXT, "incomplete request\n", False
        if len(head) > MAX_HEAD:
            return 431, TEXT, "request head too large\n", False
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return 400, TEXT, "bad request line\n", False
        method, target = parts[0], parts[1]
        path, _, query = target.partition("?")
        if path in self.actions:
            methods, act = self.actions[path]
            if method not in methods:
                return 405, TEXT, f"only {', '.join(sorted(methods))}\n", False
            try:
                res = act(method, query)
                return (*(await res if inspect.isawaitable(res) else res), False)
            except Exception as e:  # a bug in an action must not take the admin listener down
                return 500, TEXT, f"internal error: {type(e).__name__}\n", False
        handler = self.routes.get(path)
        if handler is None:
            return 404, TEXT, "not found (try /healthz, /readyz, /metrics)\n", False
        if method not in ("GET", "HEAD"):
            return 405, TEXT, "only GET and HEAD\n", False
        try:
            status, ctype, body = handler()
        except Exception as e:  # a bug in a handler must not take the admin listener down
            return 500, TEXT, f"internal error: {type(e).__name__}\n", False
        return status, ctype, body, method == "HEAD"
