"""A gateway worker in this process: the real Worker over a compiled Runtime, on a uvloop loop in a thread,
listening on a loopback port. Tests that install their own policies on routes use it (the policy interface
is reached through the Runtime, not through a config file)."""
from __future__ import annotations

import asyncio
import socket
import threading

import uvloop

from fastgw._core.runtime import Runtime
from fastgw._core.worker import Worker
from fastgw.process.worker import date_header


class InProcessWorker:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.loop = uvloop.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            w = Worker(self.rt, self.loop, b"test")
            w.sweep(self.loop.time(), date_header(0))
            self.loop.run_until_complete(self.loop.create_server(w.protocol, sock=self.sock))
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(5)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
