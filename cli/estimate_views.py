"""Rich tables and the Gantt timeline (terminal and SVG) of an estimated plan."""

from __future__ import annotations

from html import escape

from rich.markup import escape as rich_escape
from rich.table import Table
from rich.text import Text

from estimator.report import PlanReport, StepReport

PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7"]


def _fmt_s(t: float) -> str:
    if t == 0:
        return "0"
    if t >= 100:
        return f"{t:.0f} s"
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.1f} ms"
    return f"{t * 1e6:.0f} us"


def profile_line(r: PlanReport) -> Text:
    kind = "[bold yellow]analytic[/]" if r.profile_kind == "analytic" else "[green]measured[/]"
    return Text.from_markup(f"profile: {r.profile} ({kind})")


def calls_table(r: PlanReport) -> Table:
    t = Table(title=f"{r.cluster}: estimated calls")
    for col in (
        "call",
        "role",
        "model",
        "mesh",
        "strategy",
        "time",
        "peak mem",
        "fits",
        "main cost",
    ):
        t.add_column(col, justify="right" if col in ("time", "peak mem") else "left")
    for c in r.calls:
        main = max(c.breakdown_s.items(), key=lambda kv: kv[1], default=("", 0.0))
        t.add_row(
            c.name, c.role, c.model, c.mesh, c.strategy, _fmt_s(c.time_s),
            f"{c.peak_memory_gib:.1f} GiB", "yes" if c.feasible else "[bold red]NO[/]",
            f"{main[0]} {main[1] / c.time_s:.0%}" if c.time_s > 0 else "",
        )  # fmt: skip
    return t


def allocation_table(r: PlanReport) -> Table:
    t = Table(title=f"{r.cluster}: allocations")
    for col in ("call", "role", "kind", "model", "mesh", "ranks", "strategy"):
        t.add_column(col)
    for c in r.calls:
        ranks = f"{c.first_rank}-{c.last_rank}" if c.last_rank > c.first_rank else str(c.first_rank)
        t.add_row(c.name, c.role, c.kind, c.model, c.mesh, ranks, c.strategy)
    return t


def moves_table(r: PlanReport) -> Table:
    t = Table(title="reallocations and data transfers (steady-state iteration)")
    for col in ("kind", "role", "before call", "time", "start"):
        t.add_column(col)
    for m in r.moves:
        t.add_row(m.kind, m.role, m.before, _fmt_s(m.time_s), _fmt_s(m.start_s))
    if not r.moves:
        t.add_row("-", "-", "-", "-", "-")
    return t


def summary(r: PlanReport) -> Text:
    if not r.feasible:
        return Text.from_markup(f"[bold red]infeasible:[/] {rich_escape(r.reason)}")
    it = r.iteration_time_s or 0.0
    text = Text.from_markup(
        f"iteration time [bold]{_fmt_s(it)}[/] (steady state of {r.iterations_simulated} simulated"
        f"), reallocation {_fmt_s(r.realloc_time_s)}, data transfer {_fmt_s(r.data_time_s)}"
    )
    if r.max_staleness:
        text.append(f"\n{staleness_line(r.max_staleness)}")
    return text


def staleness_line(k: int) -> str:
    """What a plan's max_staleness k means, in one line."""
    ahead = "iteration" if k == 1 else "iterations"
    return (
        f"staleness k={k}: the actor's generation runs up to {k} {ahead} ahead of its "
        "training (decoupled policy loss)"
    )


# ---- timeline ---------------------------------------------------------------------------------
def _window(r: PlanReport) -> tuple[list[StepReport], float, float, list[tuple[int, int]]]:
    """Steps overlapping the last simulated iteration, its [t0, t1], and device-group rows."""
    last = r.iterations_simulated - 1
    mine = [s for s in r.timeline if s.iteration == last]
    t0, t1 = min(s.start_s for s in mine), max(s.end_s for s in mine)
    steps = [s for s in r.timeline if s.end_s > t0 and s.start_s < t1]
    cuts = sorted({s.first_rank for s in r.timeline} | {s.last_rank + 1 for s in r.timeline})
    rows = list(zip(cuts[:-1], [c - 1 for c in cuts[1:]], strict=True))
    return steps, t0, t1, rows


def _colors(r: PlanReport) -> dict[str, str]:
    return {c.name: PALETTE[i % len(PALETTE)] for i, c in enumerate(r.calls)}


def _row_label(a: int, b: int) -> str:
    return f"dev {a}" if a == b else f"dev {a}-{b}"


def gantt(r: PlanReport, width: int = 72) -> Table:
    steps, t0, t1, rows = _window(r)
    colors, span = _colors(r), max(t1 - t0, 1e-12)
    codes = {c.name: chr(ord("A") + i) for i, c in enumerate(r.calls)}
    t = Table(title=f"timeline of one steady-state iteration ({_fmt_s(span)})", show_lines=False)
    t.add_column("devices")
    t.add_column(f"{_fmt_s(0)} .. {_fmt_s(span)}", no_wrap=True)
    for a, b in rows:
        line = Text()
        for k in range(width):
            mid = t0 + (k + 0.5) * span / width
            hit = [
                s
                for s in steps
                if s.first_rank <= a and s.last_rank >= b and s.start_s <= mid < s.end_s
            ]
            if not hit:
                line.append(" ")
                continue
            s = hit[0]
            if s.kind == "call":
                line.append(codes[s.name], style=f"bold white on {colors[s.name]}")
            else:
                line.append("~" if s.kind == "realloc" else ".", style=colors[s.name])
        t.add_row(_row_label(a, b), line)
    legend = Text("  ".join(f"{codes[c.name]}={c.name}" for c in r.calls) + "  ~=realloc  .=data")
    t.caption = legend.plain
    return t  # fmt: skip


def timeline_svg(r: PlanReport, width: int = 960) -> str:
    """The same picture as `gantt`, as a standalone SVG document."""
    steps, t0, t1, rows = _window(r)
    colors, span = _colors(r), max(t1 - t0, 1e-12)
    left, top, row_h, gap = 110, 50, 34, 6
    plot_w = width - left - 50
    height = top + len(rows) * (row_h + gap) + 90
    x = lambda t: left + (t - t0) / span * plot_w  # noqa: E731
    title = f"{r.cluster} - one steady-state iteration: {_fmt_s(span)} (profile {r.profile})"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="14" font-weight="bold">{escape(title)}</text>',
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="3" height="6" fill="#555"/></pattern></defs>',
    ]
    for i, (a, b) in enumerate(rows):
        y = top + i * (row_h + gap)
        out.append(f'<text x="8" y="{y + row_h / 2 + 4}">{_row_label(a, b)}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{plot_w}" height="{row_h}" fill="#f3f3f3"/>')
        for s in steps:
            if not (s.first_rank <= a and s.last_rank >= b):
                continue
            xa, xb = x(max(s.start_s, t0)), x(min(s.end_s, t1))
            w = max(xb - xa, 0.5)
            fill = colors[s.name] if s.kind == "call" else "url(#hatch)"
            tip = f"{s.kind} {s.name}@{s.iteration}: {_fmt_s(s.end_s - s.start_s)}"
            out.append(
                f'<rect x="{xa:.2f}" y="{y}" width="{w:.2f}" height="{row_h}" fill="{fill}" '
                f'stroke="white" stroke-width="0.5"><title>{escape(tip)}</title></rect>'
            )
            if s.kind == "call" and w > 7 * len(s.name):
                out.append(
                    f'<text x="{xa + 4:.2f}" y="{y + row_h / 2 + 4}" fill="white">{s.name}</text>'
                )
    axis_y = top + len(rows) * (row_h + gap) + 4
    for k in range(6):
        tx = left + k * plot_w / 5
        out.append(
            f'<line x1="{tx:.1f}" y1="{axis_y}" x2="{tx:.1f}" y2="{axis_y + 5}" stroke="black"/>'
        )
        out.append(
            f'<text x="{tx:.1f}" y="{axis_y + 18}" text-anchor="middle">{_fmt_s(k * span / 5)}</text>'
        )
    ly, lx = axis_y + 40, left
    for c in r.calls:
        out.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{colors[c.name]}"/>')
        out.append(f'<text x="{lx + 16}" y="{ly}">{c.name}</text>')
        lx += 26 + 7 * len(c.name)
    out.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="url(#hatch)"/>')
    out.append(f'<text x="{lx + 16}" y="{ly}">realloc / data</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"  # fmt: skip
