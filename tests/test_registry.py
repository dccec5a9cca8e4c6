"""The policy registry (fastgw/policies/__init__.py): the config is composed from what the policies
register, the supervisor allocates their shared-memory sections and renders their metric families, and
nothing outside fastgw/policies/ names a policy."""
from __future__ import annotations

import ast
from pathlib import Path

import msgspec
import pytest

from fastgw._core import buckets as B
from fastgw.config.consumers import Consumer, ConsumerCore
from fastgw.config.root import Config, ConfigCore, loads
from fastgw.config.routes import Route, RouteCore
from fastgw.config.schema import compose, walk_struct
from fastgw.observe import metrics
from fastgw.policies import POLICIES, runtime
from fastgw.process.shm import SharedMemory

PKG = Path(__file__).resolve().parent.parent / "fastgw"
# The policies' packages (fastgw/policies/NAME/): only the registry may import them.
POLICY_PACKAGES = {d.name for d in (PKG / "policies").iterdir() if (d / "__init__.py").is_file()}


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at module level or inside a function ("from a import b" counts as
    a.b too, since b may be a module)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


@pytest.mark.parametrize("part", ["process", "observe", "config", "store", "compile.py", "cli.py"])
def test_no_policy_named_outside_the_registry(part: str) -> None:
    files = [PKG / part] if part.endswith(".py") else sorted((PKG / part).glob("*.py"))
    assert POLICY_PACKAGES >= {p.name for p in POLICIES}
    bad = [f"{f.relative_to(PKG.parent)}: {name}" for f in files for name in _imports(f)
           if name.startswith("fastgw.policies.") and name.split(".")[2] in POLICY_PACKAGES]
    assert not bad, bad


def _keys(cls: type[msgspec.Struct]) -> dict[str, object]:
    return {f.encode_name: f.type for f in msgspec.structs.fields(cls)}


def test_config_is_composed_from_the_registered_keys() -> None:
    root, route, consumer = _keys(Config), _keys(Route), _keys(Consumer)
    assert _keys(ConfigCore).items() <= root.items() and _keys(RouteCore).items() <= route.items()
    assert _keys(ConsumerCore).items() <= consumer.items()
    for p in POLICIES:
        assert _keys(p.sections).items() <= root.items(), p.name
        if p.route is not None:
            assert _keys(p.route).items() <= route.items(), p.name
        if p.consumer is not None:
            assert _keys(p.consumer).items() <= consumer.items(), p.name
    # Nothing else: the root is the core's keys and the policies' sections.
    assert set(root) == set(_keys(ConfigCore)).union(*(_keys(p.sections) for p in POLICIES))


class _Extra(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    greeting: str = "hello"
    required_one: int


def test_compose_adds_a_new_owners_keys_and_refuses_a_key_twice() -> None:
    Composed = compose("Composed", RouteCore, [_Extra], __name__)
    errors: list[str] = []
    raw = walk_struct(Composed, {"name": "r", "path": "/", "upstream": "u", "required_one": 1, "nope": 2}, "routes[0]",
                      errors)
    assert errors == ["routes[0].nope: unknown key"]
    r = msgspec.convert(raw, Composed)
    assert (r.name, r.greeting, r.required_one) == ("r", "hello", 1) and isinstance(r, RouteCore)
    errors = []
    walk_struct(Composed, {"name": "r", "path": "/", "upstream": "u"}, "routes[0]", errors)
    assert errors == ["routes[0].required_one: required key is missing"]
    with pytest.raises(TypeError, match="Composed.greeting: declared by"):
        compose("Composed", RouteCore, [_Extra, _Extra], __name__)


def test_each_registered_check_runs() -> None:
    """A reference no policy check knows about passes; each policy's own key is checked by its check."""
    base = '[upstreams.u]\ntargets = ["127.0.0.1:1"]\n[[routes]]\nname = "r"\npath = "/"\nupstream = "u"\n'
    with pytest.raises(Exception) as info:
        loads(base + 'plan = "gold"\nauth = ["jwt:nobody"]\n')
    errors = info.value.errors  # type: ignore[attr-defined]
    assert 'routes[0].plan: unknown plan "gold" (known: none)' in errors
    assert 'routes[0].auth[0]: unknown JWT issuer "nobody" (known: none)' in errors


def test_supervisor_creates_and_formats_the_registered_sections() -> None:
    cfg = loads('[upstreams.u]\ntargets = ["127.0.0.1:1"]\n[[routes]]\nname = "r"\npath = "/"\nupstream = "u"\n')
    registered = [s for p in POLICIES for s in runtime(p).shm_sections(cfg, 2)]
    assert {s.name for s in registered} >= {"ratelimit", "rlstats", "authfail"}
    shm = SharedMemory.create([metrics.shm_section(2), *registered])
    for s in registered:
        off, size = shm.layout.sections[s.name]
        assert size == s.size and len(shm.section(s.name)) == s.size
    # Formatted once by the supervisor: the traffic policy's table carries this instance's id.
    assert B.Table(shm.section("ratelimit"), init=False).instance != 0
    # A worker attaches what the policies registered; the scrape renders each policy's families.
    services: dict[str, object] = {}
    for p in POLICIES:
        runtime(p).attach(shm, 1, services)
    assert {"ratelimit_table", "ratelimit_stats", "authfail_table"} <= set(services)
    families = [runtime(p).metrics(shm, 2, [0, 1], cfg) for p in POLICIES]
    text = metrics.render(None, ["(none)"], {"reloads": {}, "hash": "h", "configured": 2, "running": 2, "ready": 2,
                                             "restarts": 0, "draining": False}, families)
    assert "# TYPE fastgw_ratelimit_decisions_total counter" in text
    assert text.index("fastgw_draining") < text.index("fastgw_ratelimit_decisions_total")


def test_config_fields_are_read_by_name() -> None:
    """The config is typed: its fields are read as attributes, never with getattr (a getattr with a
    default hides a misspelt or moved key; mypy checks the attribute)."""
    files = [*(PKG / "config").glob("*.py"), *(PKG / "policies").rglob("*.py")]
    calls = [f"{f.relative_to(PKG.parent)}:{n.lineno}" for f in files for n in ast.walk(ast.parse(f.read_text()))
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "getattr"]
    assert not calls, calls
