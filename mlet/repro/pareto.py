"""Every embedding reduction side by side: test AUC against inference embedding bytes.

A *method* is a kind of table (baseline, MLET, quotient-remainder, mixed
dimensions, MLET with either) at a precision (float32, or row-wise int8 /
int4 after training); its configs differ in width d. Each (protocol,
optimizer) gets one point per method and config: mean test AUC over seeds at
the protocol's learning rate (the quantized models are those of the same
runs, at the rate chosen for the float model) against the bytes of the
embedding tables as served (collapsed, quantized: scales and biases
included; mixed-dimension projections in float32).

The *Pareto table* asks, for a few AUC levels (the float baseline's at
d = 8, 16, 32, 64): what is the smallest model of each method whose mean
test AUC reaches the level, how many bytes it takes, and how many times
smaller than the baseline that defines the level it is. The *frontier* is
the set of points no other point beats in both AUC and bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mlet.repro.experiments import Config, size_text
from mlet.repro.protocols import Selection

LEVEL_DIMS = (8, 16, 32, 64)
PRECISIONS: tuple[int | None, ...] = (None, 8, 4)


@dataclass(frozen=True)
class Point:
    """One config at one precision under one (protocol, optimizer)."""

    protocol: str
    optimizer: str
    config: Config
    bits: int | None  # None: float32
    auc: float  # mean test AUC over seeds
    auc_std: float
    bytes: int  # inference embedding bytes

    @property
    def method(self) -> str:
        """``MLET K=64 + QR c=4``, with ``int8`` / ``int4`` for quantized tables."""
        return self.config.method_at(self.bits)

    @property
    def panel(self) -> tuple[str, str]:
        """``(protocol, optimizer)``."""
        return self.protocol, self.optimizer


def points(selections: Sequence[Selection]) -> list[Point]:
    """Every selection at float32 and at each precision all its runs were evaluated at."""
    out = []
    for s in selections:
        for bits in PRECISIONS:
            variant = s.variant(bits)
            if variant is None:
                continue
            mean, std = variant.stat("test_auc")
            size = variant.runs[0].inference_embedding_bytes
            out.append(Point(s.protocol, s.optimizer, s.config, bits, mean, std, size))
    return out


def method_order(point: Point) -> tuple:
    """Methods in a fixed order: baseline, MLET, QR, MD, MLET+QR, MLET+MD; float32 before int8 before int4."""
    c = point.config
    kind = ("", "qr", "md").index(c.method)
    return (
        c.is_mlet and bool(c.method),
        kind,
        c.is_mlet,
        c.hidden,
        c.collisions,
        c.temperature,
        PRECISIONS.index(point.bits),
    )


def frontier(panel: Sequence[Point]) -> list[Point]:
    """The points of one panel that no other beats: by increasing bytes, each with a higher AUC than all smaller."""
    best = -math.inf
    kept = []
    for p in sorted((p for p in panel if math.isfinite(p.auc)), key=lambda p: (p.bytes, -p.auc)):
        if p.auc > best:
            kept.append(p)
            best = p.auc
    return kept


def levels(panel: Sequence[Point], dims: Sequence[int] = LEVEL_DIMS) -> list[Point]:
    """The float baseline points that define the AUC levels (those of ``dims`` present)."""
    base = {p.config.dim: p for p in panel if p.config.is_baseline and p.bits is None and math.isfinite(p.auc)}
    return [base[d] for d in dims if d in base]


def smallest_reaching(panel: Sequence[Point], method: str, level: float) -> Point | None:
    """The method's point with the fewest bytes whose mean test AUC is at least ``level``."""
    reaching = [p for p in panel if p.method == method and math.isfinite(p.auc) and p.auc >= level]
    return min(reaching, key=lambda p: (p.bytes, -p.auc), default=None)


def pareto_rows(panel: Sequence[Point]) -> list[dict]:
    """One row per method: for each level, the smallest model reaching it (None: none does)."""
    marks = levels(panel)
    methods = sorted({p.method: p for p in panel}.values(), key=method_order)
    return [
        {
            "method": m.method,
            "cells": [{"level": level, "point": smallest_reaching(panel, m.method, level.auc)} for level in marks],
        }
        for m in methods
    ]


def pareto_table(all_points: Sequence[Point]) -> str:
    """The markdown tables: per (protocol, optimizer), the smallest model of each method at each AUC level."""
    out = []
    for panel_key in sorted({p.panel for p in all_points}):
        panel = [p for p in all_points if p.panel == panel_key]
        marks = levels(panel)
        if not marks:
            out += [f"**{panel_key[0]} protocol, {panel_key[1]}**: {no_levels_text(panel)}", ""]
            continue
        header = " | ".join(f">= baseline d={m.config.dim} ({m.auc:.4f}, {size_text(m.bytes)})" for m in marks)
        out += [f"**{panel_key[0]} protocol, {panel_key[1]}**", "", f"| method | {header} |"]
        out.append("|---|" + "---|" * len(marks))
        for row in pareto_rows(panel):
            cells = []
            for cell in row["cells"]:
                p, level = cell["point"], cell["level"]
                cells.append(
                    "-" if p is None else f"d={p.config.dim}: {size_text(p.bytes)} ({level.bytes / p.bytes:.2g}x)"
                )
            out.append(f"| {row['method']} | {' | '.join(cells)} |")
        out.append("")
    return "\n".join(out)


def no_levels_text(panel: Sequence[Point]) -> str:
    """Why a panel has no AUC levels: the float baselines it has, none at :data:`LEVEL_DIMS`."""
    dims = sorted({p.config.dim for p in panel if p.config.is_baseline and p.bits is None and math.isfinite(p.auc)})
    wanted = ", ".join(map(str, LEVEL_DIMS[:-1])) + f" or {LEVEL_DIMS[-1]}"
    have = ", ".join(f"d={d}" for d in dims) or "none"
    return (
        f"no AUC levels: no float baseline at d={wanted} has a finite AUC here (float baselines: {have}); "
        "the frontier below still compares every method"
    )


def frontier_lines(all_points: Sequence[Point]) -> list[str]:
    """One line per panel: the frontier's points, smallest first."""
    lines = []
    for panel_key in sorted({p.panel for p in all_points}):
        front = frontier([p for p in all_points if p.panel == panel_key])
        steps = ", ".join(f"{p.method} d={p.config.dim} ({size_text(p.bytes)}, {p.auc:.4f})" for p in front)
        lines.append(f"- {panel_key[0]}, {panel_key[1]}: {steps}")
    return lines


def point_json(p: Point) -> dict:
    """A :class:`Point` as plain data."""
    return {
        "protocol": p.protocol,
        "optimizer": p.optimizer,
        "config": p.config.label,
        "method": p.method,
        "dim": p.config.dim,
        "bits": p.bits or 32,
        "test_auc_mean": p.auc,
        "test_auc_std": p.auc_std,
        "inference_embedding_bytes": p.bytes,
    }


def pareto_json(all_points: Sequence[Point]) -> dict:
    """Points, frontiers and the level table as plain data."""
    panels = sorted({p.panel for p in all_points})
    return {
        "points": [point_json(p) for p in all_points],
        "frontier": {
            f"{key[0]}/{key[1]}": [point_json(p) for p in frontier([q for q in all_points if q.panel == key])]
            for key in panels
        },
        "levels": {
            f"{key[0]}/{key[1]}": [
                {
                    "method": row["method"],
                    "cells": [
                        {
                            "baseline_dim": c["level"].config.dim,
                            "level_auc": c["level"].auc,
                            "baseline_bytes": c["level"].bytes,
                            "point": point_json(c["point"]) if c["point"] else None,
                            "ratio": c["level"].bytes / c["point"].bytes if c["point"] else None,
                        }
                        for c in row["cells"]
                    ],
                }
                for row in pareto_rows([p for p in all_points if p.panel == key])
            ]
            for key in panels
        },
    }


def plot_pareto(all_points: Sequence[Point], figure: Callable) -> tuple:
    """Test AUC against inference embedding bytes, every method (colour: table kind; filled: float32, half
    and hollow: int8, int4), configs of a method joined by d, the frontier as a grey step line.

    ``figure(count, width, height)`` makes the panels (``summary_plots.figure``); returns ``(fig, axes)``."""
    import matplotlib.cm as cm

    panels = sorted({p.panel for p in all_points})
    fig, axes = figure(len(panels), width=7.0, height=5.2)
    kinds = list(dict.fromkeys(p.config.method_name for p in sorted(all_points, key=method_order)))
    colors = {k: cm.tab10(i % 10) for i, k in enumerate(kinds)}
    fills = {None: "full", 8: "left", 4: "none"}
    for ax, key in zip(axes, panels):
        panel = [p for p in all_points if p.panel == key and math.isfinite(p.auc)]
        for method in dict.fromkeys(p.method for p in sorted(panel, key=method_order)):
            series = sorted((p for p in panel if p.method == method), key=lambda p: p.bytes)
            first = series[0]
            ax.plot(
                [p.bytes for p in series],
                [p.auc for p in series],
                marker="o",
                fillstyle=fills[first.bits],
                linestyle="-" if first.bits is None else ":",
                color=colors[first.config.method_name],
                label=method,
                markersize=6,
                linewidth=1,
            )
        front = frontier(panel)
        ax.step([p.bytes for p in front], [p.auc for p in front], where="post", color="grey", alpha=0.5, linewidth=3)
        ax.set_xscale("log")
        ax.set_xlabel("inference embedding bytes (collapsed; quantized incl. scales and biases)")
        ax.set_ylabel("test AUC (mean over seeds)")
        ax.set_title(f"{key[0]} protocol, {key[1]} (grey: Pareto frontier)")
    return fig, axes
