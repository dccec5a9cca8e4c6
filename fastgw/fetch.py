"""A small HTTP/1.1 GET client for the gateway's own fetches (a JWT issuer's JWK Set; the cache's
background revalidation): one request per connection, http or https (certificate verified), a 200 or an error, and a body
of at most `max_body` bytes (Content-Length, chunked, or read to the close).
"""
from __future__ import annotations

import asyncio
import ssl
import urllib.parse


async def http_get(url: str, timeout: float, max_body: int) -> bytes:
    """GET `url` (http or https, certificate verified), returning the body of a 200 response (at most
    `max_body` bytes, else ValueError)."""
    status, _, body = await http_request(url, timeout, max_body, b"Accept: application/json\r\n")
    if status != 200:
        raise ValueError(f"status {status}")
    return body


async def http_request(url: str, timeout: float, max_body: int, extra: bytes = b"",
                       host_header: str | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
    """GET `url` with the header lines `extra` (and Host `host_header`, default the URL's): the final
    status, the header fields (lowercase names) and the body (at most `max_body` bytes, else ValueError).
    A 204 or 304 has no body."""
    u = urllib.parse.urlsplit(url)
    https = u.scheme == "https"
    host = u.hostname or ""
    port = u.port or (443 if https else 80)
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl.create_default_context() if https else None,
            server_hostname=host if https else None, limit=max_body + 65536)
        try:
            writer.write(f"GET {target} HTTP/1.1\r\nHost: {host_header or u.netloc}\r\n".encode() + extra
                         + b"User-Agent: fastgw\r\nConnection: close\r\n\r\n")
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                status_line = lines[0].split(" ", 2)
                if len(status_line) < 2 or not status_line[1].isdigit():
                    raise ValueError(f"status {lines[0]!r}")
                status = int(status_line[1])
                if status >= 200:
                    break                                      # 1xx: interim, skipped
            pairs = []
            fields = {}
            for line in lines[1:]:
                name, colon, value = line.partition(":")
                if colon:
                    pairs.append((name.strip().lower(), value.strip()))
                    fields[name.strip().lower()] = value.strip()
            if status in (204, 304):
                return status, pairs, b""
            if "chunked" in fields.get("transfer-encoding", "").lower():
                parts = []
                size_total = 0
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    size_total += size
                    if size_total > max_body:
                        raise ValueError("body too large")
                    if size == 0:
                        break
                    parts.append(await reader.readexactly(size))
                    await reader.readexactly(2)
                return status, pairs, b"".join(parts)
            if "content-length" in fields:
                n = int(fields["content-length"])
                if n > max_body:
                    raise ValueError("body too large")
                return status, pairs, await reader.readexactly(n)
            body = await reader.read(max_body + 1)
            if len(body) > max_body:
                raise ValueError("body too large")
            return status, pairs, body
        finally:
            writer.close()
