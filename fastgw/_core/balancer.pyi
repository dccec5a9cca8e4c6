from typing import Any

MAGLEV_SIZE: int
SLOW_START_FLOOR: int

def hash_bytes(data: bytes, seed: int = 0) -> int: ...

class TargetTable:
    def __init__(self, buf: Any, init: bool = False) -> None: ...
    def slots_used(self) -> int: ...
    def words(self, key: int) -> memoryview | None: ...
    def having(self, word: int, value: int) -> list[memoryview]: ...
    def add(self, key: int, word: int, delta: int) -> None: ...

class UpstreamGroup:
    name: str
    targets: list[Target]
    ssl: Any
    server_name: str | None
    rr: int
    connect_timeout: float
    timeout: float
    idle_timeout: float
    balance: int
    uniform: bool
    total: int
    slow_start: float
    msize: int
    max_fails: int
    base_ms: int
    max_ms: int
    eject_pct: int
    panic_pct: int
    panic_fail: bool
    max_conns: int
    max_pending: int
    max_requests: int
    attempts: int
    retry_on: int
    budget_pct: int
    budget_min: int
    backoff: float
    backoff_max: float
    try_timeout: float
    replay_max: int
    def __init__(self) -> None: ...
    def attach_records(self, table: TargetTable | None, key: int) -> None: ...
    def limits(self, max_connections: int, max_pending: int, max_requests: int) -> None: ...
    def retry(self, attempts: int, on_bits: int, budget_percent: int, budget_min: int, backoff: float,
              backoff_max: float, try_timeout: float, replay_buffer: int) -> None: ...
    def outlier(self, consecutive_failures: int, base_ejection: float, max_ejection: float,
                max_ejected_percent: int, panic_threshold: int, panic_fail: bool) -> None: ...
    def setup(self, balance: str, hash_key: str | None = None, slow_start: float = 0.0, seed: int = 0) -> None: ...
    def key_target(self, key: bytes) -> Target: ...
    def build_maglev(self) -> None: ...

class Target:
    host: str
    port: int
    keepalive: int
    idle: list[Any]
    group: UpstreamGroup
    hostport: bytes
    h2pool: Any                      # fastgw._core.upstream_h2.H2Pool, for targets of HTTP/2 upstreams
    weight: int
    index: int
    since: float
    inflight: int
    ejected: bool
    consecutive_failures: int
    def record_failure(self, reason: int) -> None: ...
    def record_success(self) -> None: ...
    def __init__(self, host: str, port: int, keepalive: int, group: UpstreamGroup, weight: int = 1,
                 table: TargetTable | None = None, key: int = 0) -> None: ...
    def add_inflight(self, n: int) -> None: ...
    def close_idle(self) -> None: ...

def pick_target(g: UpstreamGroup, ex: Any = None) -> Target: ...
def finish_target(t: Target) -> None: ...
