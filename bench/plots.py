"""Pictures of benchmark results: a PNG next to each markdown result, drawn from the markdown itself.

The markdown a bench script writes is the record (bench/results/*.md, committed); the plot is derived
from it, so a plot can always be redrawn from a committed result without running anything again:

    python3 bench/plots.py                      # latest-<kind>.png for the latest result of each kind
    python3 bench/plots.py bench/results/X.md   # X.png beside it (-o PATH to write elsewhere)

One panel per figure the result has (requests per second, CPU per request, latency p50 and p99, memory
per connection, instructions per request), groups (scenario and connections, or a variant) along x, one
bar per system (nginx grey, fastgw blue) at the median, one dot per round where the result lists its
rounds (the "Every run" / "Every round" tables: bench/rounds.py), and the ratio to nginx over each bar
measured against it. matplotlib is imported only to draw (the bench scripts themselves are stdlib only);
it comes with the dev extra.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import statistics
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# Markdown column -> (figure key, conversion). CPU is recorded as CPU seconds per 100k requests and
# shown as microseconds per request (x 10), the unit the docs discuss it in.
COLUMNS: dict[str, tuple[str, Callable[[float], float]]] = {
    "req/s": ("rps", float), "req/s (median)": ("rps", float),
    "CPU s/100k": ("cpu_us", lambda v: v * 10), "CPU s / 100k req": ("cpu_us", lambda v: v * 10),
    "p50 ms": ("p50_ms", float), "p99 ms": ("p99_ms", float),
    "RSS B/conn": ("rss_b", float), "Pss B/conn": ("pss_b", float),
    "instructions/request": ("instructions", float),
    "failed requests": ("failed", float), "recovery ms": ("recovery_ms", float),
}
# Figure key -> panel title (in the order panels are drawn).
FIGURES = {
    "rps": "requests per second (higher is better)",
    "cpu_us": "proxy CPU µs per request (lower is better)",
    "p50_ms": "latency p50, ms (lower is better)",
    "p99_ms": "latency p99, ms (lower is better)",
    "rss_b": "RSS bytes per idle connection",
    "pss_b": "Pss bytes per idle connection",
    "instructions": "worker instructions per request",
    "failed": "failed client requests (lower is better)",
    "recovery_ms": "ms from the kill to the last failed request (lower is better)",
}
SYSTEM_COLUMNS = ("system", "proxy", "variant")
# Where the latest result of each kind is: latest-<kind>.md, else the last of the pattern by name
# (timestamped names sort by time).
KINDS = {"proxy": "*-proxy.md", "ratelimit": "*-ratelimit.md", "jwt": "*-jwt.md", "workers": "*-workers.md",
         "h2": "h2-*.md", "memory": "*-memory.md", "resilience": "*-resilience.md"}
PALETTE = ("#1f6fb4", "#e07b24", "#2a9d5c", "#b03a7a", "#7a5cc4", "#8c6d31")
NGINX_COLOUR = "#8a8a8a"


@dataclass
class Table:
    heading: str
    header: list[str]
    rows: list[dict[str, str]]


@dataclass
class Cell:
    """One system in one group: its figures, one value per round (or just the median)."""

    values: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class Result:
    title: str
    cells: dict[tuple[str, str], Cell]       # (group, system) -> figures
    per_round: bool

    def groups(self) -> list[str]:
        return list(dict.fromkeys(g for g, _ in self.cells))

    def systems(self) -> list[str]:
        return list(dict.fromkeys(s for _, s in self.cells))

    def figures(self) -> list[str]:
        present = {k for c in self.cells.values() for k in c.values}
        return [k for k in FIGURES if k in present]


def tables(text: str) -> list[Table]:
    """Every pipe table in a markdown text, with the heading it is under."""
    out: list[Table] = []
    heading = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1]):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip("|").split("|")]
                rows.append(dict(zip(header, cells, strict=False)))
                i += 1
            out.append(Table(heading, header, rows))
            continue
        i += 1
    return out


def number(text: str) -> float | None:
    """The leading number of a cell ("46,972 (1.000x)" -> 46972.0; "" -> None)."""
    m = re.match(r"\s*\**([\d,]*\.?\d+)", text)
    return float(m.group(1).replace(",", "")) if m else None


def _group(row: dict[str, str], table: Table, several: bool) -> str:
    if "group" in row:
        return row["group"]
    parts = [row["scenario"]] if "scenario" in row else []
    if "conns" in row:
        parts.append(f"c{row['conns']}")
    if not parts and several:
        parts.append(table.heading)              # one table per variant family (bench/workers.py)
    return " ".join(parts)


def parse(text: str) -> Result:
    """The figures of a markdown result: from its per-round table(s) when it has any, else its medians."""
    title = next((ln.lstrip("#").strip() for ln in text.splitlines() if ln.startswith("# ")), "benchmark")
    found = [t for t in tables(text)
             if any(c in COLUMNS for c in t.header)
             and any(c in t.header for c in SYSTEM_COLUMNS + ("scenario",))]
    rounds = [t for t in found if "round" in t.header]
    use = rounds or found
    several = len({tuple(t.header) for t in use}) < len(use)
    cells: dict[tuple[str, str], Cell] = {}
    for t in use:
        for row in t.rows:
            system = next((row[c] for c in SYSTEM_COLUMNS if c in row), "fastgw")
            cell = cells.setdefault((_group(row, t, several), system), Cell())
            for col, raw in row.items():
                if col in COLUMNS and (v := number(raw)) is not None:
                    key, conv = COLUMNS[col]
                    cell.values.setdefault(key, []).append(conv(v))
            if "rounds" in row:                              # bench/h2.py: "68035, 65630, 67709"
                cell.values["rps"] = [v for x in row["rounds"].split(",") if (v := number(x)) is not None]
    per_round = bool(rounds) or any("rounds" in t.header for t in use)
    if not cells:
        raise ValueError("no table of figures found")
    return Result(title, cells, per_round)


def colour(system: str, systems: list[str]) -> str:
    if system.startswith("nginx"):
        return NGINX_COLOUR
    others = [s for s in systems if not s.startswith("nginx")]
    return PALETTE[others.index(system) % len(PALETTE)]


def draw(result: Result, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = result.figures()
    groups, systems = result.groups(), result.systems()
    ncols = 1 if len(figs) == 1 else 2
    nrows = (len(figs) + ncols - 1) // ncols
    bars = len(result.cells)
    panel_width = max(6.0, min(9.0, 2.5 + 0.6 * bars))
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_width * ncols, 3.4 * nrows + 1.0), squeeze=False)
    for ax in axes.flat[len(figs):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, figs, strict=False):
        labelled: set[str] = set()
        for gi, g in enumerate(groups):
            present = [s for s in systems if (g, s) in result.cells and key in result.cells[(g, s)].values]
            w = 0.8 / max(1, len(present))
            ref = next((statistics.median(result.cells[(g, s)].values[key]) for s in present
                        if s.startswith("nginx")), None)
            for si, s in enumerate(present):
                vals = result.cells[(g, s)].values[key]
                x = gi - 0.4 + w * (si + 0.5)
                med = statistics.median(vals)
                ax.bar(x, med, w * 0.9, color=colour(s, systems), label=None if s in labelled else s)
                labelled.add(s)
                if len(vals) > 1:
                    ax.vlines(x, min(vals), max(vals), color="black", linewidth=1)
                    ax.plot([x] * len(vals), vals, "o", color="black", markersize=2.5)
                if ref and not s.startswith("nginx"):
                    ax.annotate(f"{med / ref:.2f}×", (x, max(vals)), textcoords="offset points", xytext=(0, 2),
                                ha="center", va="bottom", fontsize=7)
        ax.set_title(FIGURES[key], fontsize=10)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, fontsize=8, rotation=20 if len(groups) > 6 else 0)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.margins(y=0.12)
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=False):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    note = ("bars: median over rounds, dots and line: each round" if result.per_round
            else "bars: the result's figures (it does not list its rounds)")
    if any(s.startswith("nginx") for s in systems):
        note += "; n.nn×: ratio to nginx in the same group"
    chars = int(panel_width * ncols * 11)
    fig.suptitle("\n".join(textwrap.wrap(result.title, chars) + textwrap.wrap(note, chars)), fontsize=10)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.5 / fig.get_figheight(), 1, 1))
    fig.savefig(png, dpi=110)
    plt.close(fig)


def write(md_path: str, png_path: str | None = None) -> str:
    """Draw the PNG for one markdown result (beside it unless `png_path`); returns its path."""
    png = png_path or os.path.splitext(md_path)[0] + ".png"
    with open(md_path) as f:
        draw(parse(f.read()), png)
    return png


def after_run(md_path: str) -> None:
    """What a bench script calls once it has saved its markdown: the plot beside it, or why not."""
    try:
        print(f"plot: {write(md_path)}", file=sys.stderr)
    except ImportError:
        print("plot skipped: matplotlib is not installed (pip install -e '.[dev]')", file=sys.stderr)


def latest_sources(results: str = RESULTS_DIR) -> dict[str, str]:
    """Kind -> the markdown of its latest result."""
    out = {}
    for kind, pattern in KINDS.items():
        latest = os.path.join(results, f"latest-{kind}.md")
        found = [latest] if os.path.exists(latest) else sorted(glob.glob(os.path.join(results, pattern)))
        if found:
            out[kind] = found[-1]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="*", help="markdown results (default: the latest of each kind)")
    ap.add_argument("-o", "--output", help="PNG path (one result only)")
    ap.add_argument("--results-dir", default=RESULTS_DIR, help="where the latest results are (no FILE given)")
    a = ap.parse_args(argv)
    if a.output and len(a.results) != 1:
        ap.error("-o needs exactly one result")
    if a.results:
        jobs = [(p, a.output) for p in a.results]
    else:
        jobs = [(src, os.path.join(a.results_dir, f"latest-{kind}.png"))
                for kind, src in latest_sources(a.results_dir).items()]
    for src, png in jobs:
        print(f"{src} -> {write(src, png)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
