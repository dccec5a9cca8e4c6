"""No dead code in fastgw/: every Python definition is used, and every Runtime field compile.py sets is
read by the data path.

Python: vulture (60% confidence and up) over fastgw/, with every name the compiled sources mention
counted as used (the Cython data path reads policy attributes and calls Python methods by name:
`slow`, `by_name`, `prefetch`, ...). The few names vulture cannot see used are listed with their reason.
"""
from __future__ import annotations

import ast
import keyword
import re
from pathlib import Path

import vulture

PKG = Path(__file__).resolve().parent.parent / "fastgw"
CORE = [*PKG.glob("_core/*.pyx"), *PKG.glob("_core/*.pxi"), *PKG.glob("_core/*.pxd")]

ALLOWED = {
    "balance": "a config key ([upstreams.NAME] balance): validated, one value so far",
    "phases": "the policy registry's placeholder for per-route phase tuples (documented there)",
    "source_port": "a field of the parsed PROXY protocol header (tests read it)",
    "context": "ssl.SSLObject.context, set by the SNI callback (fastgw/tls.py)",
    "collect": "prometheus_client's Collector interface: the registry calls it at each scrape",
    "string_value": "a field of the OTLP AnyValue message, set for the collector (fastgw/observe/tracing.py)",
    "double_value": "a field of the OTLP AnyValue message, set for the collector (fastgw/observe/tracing.py)",
}


def test_no_unused_python_code(tmp_path: Path) -> None:
    names = {n for p in CORE for n in re.findall(r"\b[A-Za-z_]\w*\b", p.read_text())
             if not keyword.iskeyword(n) and n not in ("True", "False", "None")}
    used = tmp_path / "used_by_core.py"
    used.write_text("".join(f"_.{n}\n" for n in sorted(names)))
    v = vulture.Vulture()
    v.scavenge([str(PKG), str(used)])
    dead = [item.get_report().strip() for item in v.get_unused_code(min_confidence=60)
            if item.name not in ALLOWED]
    assert not dead, "\n".join(dead)


def test_every_runtime_field_is_read() -> None:
    """compile.py builds the Runtime (`run.NAME = ...`); the data path reads it as `rt.NAME` / `rt0.NAME`
    (the Runtime a connection or request holds)."""
    tree = ast.parse((PKG / "compile.py").read_text())
    fields = {t.attr for node in ast.walk(tree) if isinstance(node, ast.Assign) for t in node.targets
              if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "run"}
    assert {"router", "header_timeout", "h2"} <= fields
    core = "\n".join(p.read_text() for p in CORE)
    unread = sorted(f for f in fields if not re.search(rf"\brt0?\.{f}\b", core))
    assert not unread, f"Runtime fields set by compile.py that the data path never reads: {unread}"
