"""A small HTTP/1.1 GET client for the gateway's own fetches (today a JWT issuer's JWK Set; later health
probes): one request per connection, http or https (certificate verified), a 200 or an error, and a body
of at most `max_body` bytes (Content-Length, chunked, or read to the close).
"""
from __future__ import annotations

import asyncio
import ssl
import urllib.parse


async def http_get(url: str, timeout: float, max_body: int) -> bytes:
    """GET `url` (http or https, certificate verified), returning the body of a 200 response (at most
    `max_body` bytes, else ValueError)."""
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
            writer.write(f"GET {target} HTTP/1.1\r\nHost: {u.netloc}\r\nAccept: application/json\r\n"
                         f"User-Agent: fastgw\r\nConnection: close\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = lines[0].split(" ", 2)
            if len(status) < 2 or status[1] != "200":
                raise ValueError(f"status {lines[0]!r}")
            fields = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
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
                return b"".join(parts)
            if "content-length" in fields:
                n = int(fields["content-length"])
                if n > max_body:
                    raise ValueError("body too large")
                return await reader.readexactly(n)
            body = await reader.read(max_body + 1)
            if len(body) > max_body:
                raise ValueError("body too large")
            return body
        finally:
            writer.close()

