"""The documentation stays true: the configuration reference against the schema, the error page against
the problem catalogue, every link and every section a text names, and no page pointing outside the repo."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from fastgw.config.reference import REQUIRED, Key, keys, row, type_name
from fastgw.config.root import Config
from fastgw.config.schema import _walk

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
README = ROOT / "README.md"


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row; `\\|` is a pipe inside a cell."""
    parts = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [p.strip().replace("\\|", "|") for p in parts]


def _reference_rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in (DOCS / "configuration.md").read_text().splitlines():
        if not line.startswith("| `"):
            continue
        cells = _cells(line)
        m = re.fullmatch(r"`([A-Za-z0-9_.\[\]]+)`", cells[0])
        if m and ("." in m[1]):
            assert m[1] not in rows, f"{m[1]} is listed twice in docs/configuration.md"
            rows[m[1]] = cells
    return rows


def test_reference_lists_exactly_the_schema_keys() -> None:
    schema = {k.path: k for k in keys(Config)}
    rows = _reference_rows()
    assert {"routes[].auth", "plans.NAME.limits[].rate", "consumers.NAME.plan"} <= set(schema), \
        "policy keys (registry) must be part of the walked schema"
    missing = [row(schema[p]) for p in schema if p not in rows]
    unknown = sorted(set(rows) - set(schema))
    assert not missing, "keys in the schema but not in docs/configuration.md (rows to add):\n" + "\n".join(missing)
    assert not unknown, f"keys in docs/configuration.md that the schema does not have: {unknown}"


def _doc_default(key: Key, text: str) -> object:
    """The reference's default for `key`, converted as the config loader would convert it."""
    m = re.fullmatch(r"`(.*)`", text)
    assert m, f"{key.path}: the default must be a TOML value in backticks, {REQUIRED!r} or prose, got {text!r}"
    value = tomllib.loads(f"v = {m[1]}")["v"]
    errors: list[str] = []
    converted = _walk(key.type, value, key.path, errors)
    assert not errors, errors
    return converted


@pytest.mark.parametrize("key", list(keys(Config)), ids=lambda k: k.path)
def test_reference_type_and_default_match_the_schema(key: Key) -> None:
    cells = _reference_rows()[key.path]
    _, typ, default, meaning = cells
    assert typ == type_name(key.type), f"{key.path}: type"
    assert meaning, f"{key.path}: no meaning given"
    if key.required:
        assert default == REQUIRED, f"{key.path} is required"
    elif key.default is None:
        assert not default.startswith("`"), f"{key.path} has no default value; say what applies (e.g. unset)"
    else:
        assert _doc_default(key, default) == key.default, f"{key.path}: default"


def test_error_page_lists_exactly_the_catalogue() -> None:
    from fastgw.errors import PROBLEMS

    text = (DOCS / "errors.md").read_text()
    table = text.split("## The catalogue", 1)[1].split("\n## ", 1)[0]
    rows = {m[1]: int(m[2]) for m in re.finditer(r"^\| `([a-z0-9-]+)` \| (\d{3}) \|", table, re.M)}
    assert rows == {slug: s.status for slug, s in PROBLEMS.items()}


def test_every_slug_in_the_catalogue_is_sent() -> None:
    """A slug nothing sends would be documented as an answer clients never get."""
    from fastgw.errors import PROBLEMS

    sources = [p for ext in ("py", "pyx", "pxi") for p in (ROOT / "fastgw").rglob(f"*.{ext}")
               if p.name != "errors.py"]
    code = "\n".join(p.read_text() for p in sources)
    unsent = sorted(slug for slug in PROBLEMS if not re.search(rf'b?"{re.escape(slug)}"', code))
    assert not unsent, f"slugs in fastgw/errors.py that no code path sends: {unsent}"


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lowercased, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"#{1,6} (.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m[1].strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_links_resolve(page: Path) -> None:
    """Every relative link names a file of the repository and, with #anchor, one of its headings."""
    text = page.read_text()
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text()):
            bad.append(f"{target}: no such heading")
    assert not bad, bad


def test_index_lists_every_page() -> None:
    index = (DOCS / "README.md").read_text()
    unlisted = [p.name for p in PAGES if p.name != "README.md" and f"]({p.name})" not in index]
    assert not unlisted, f"docs/README.md does not list: {unlisted}"


def test_readme_is_short() -> None:
    """The README is the way in (what it is, the two commands, a tour, links); the reference is docs/."""
    lines = README.read_text().splitlines()
    assert len(lines) <= 120, f"README.md has {len(lines)} lines: move reference material to docs/"
    assert "make run" in README.read_text() and "make test" in README.read_text()


# Text of the repository outside the compiled core (whose docstrings the core's own work updates).
_TEXT = [p for p in [*ROOT.glob("*.md"), *DOCS.glob("*.md"), *(ROOT / "config").glob("*"), *(ROOT / "deploy").rglob("*"),
                     ROOT / "Dockerfile", ROOT / "Makefile", *(ROOT / "bench").glob("*.py"), ROOT / "bench" / "README.md",
                     *(ROOT / "fastgw").rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "examples").rglob("*")]
         if p.is_file()]


def test_no_text_points_outside_the_repository() -> None:
    """The docs stand alone: nothing sends a reader to the design notes kept outside the repository."""
    bad = [f"{p.relative_to(ROOT)}:{n}" for p in _TEXT if p != Path(__file__)
           for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"DESIGN\.md|\.\./shared", line)]
    assert not bad, bad


def test_section_references_name_existing_headings() -> None:
    """A page and a quoted heading after it, in code, config and tests, name a heading of that page; no text names a
    README section any more (the README is short; the reference moved to docs/)."""
    bad = []
    for p in _TEXT:
        text = re.sub(r"\n\s*#?\s*", " ", p.read_text())          # references wrap across comment lines
        for page, heading in re.findall(r'docs/([a-z0-9-]+\.md)\s+"([^"]+)"', text):
            target = DOCS / page
            if not target.exists():
                bad.append(f"{p.relative_to(ROOT)}: docs/{page}: no such page")
            elif not re.search(rf"^#+ {re.escape(heading)}$", target.read_text(), re.M):
                bad.append(f'{p.relative_to(ROOT)}: docs/{page} has no heading "{heading}"')
        bad += [f"{p.relative_to(ROOT)}: README {m}" for m in re.findall(r'README\s+"[^"]+"', text)]
    assert not bad, bad


def test_every_metric_family_is_documented() -> None:
    code = "\n".join(p.read_text() for p in (ROOT / "fastgw").rglob("*.py"))
    families = set(re.findall(r'(?:family\("|# TYPE )(fastgw_[a-z_]+)', code))
    docs = "\n".join(p.read_text() for p in PAGES)
    undocumented = sorted(f for f in families if f"`{f}" not in docs)
    assert {"fastgw_requests_total", "fastgw_ratelimit_decisions_total"} <= families
    assert not undocumented, f"metric families not in docs/: {undocumented}"
