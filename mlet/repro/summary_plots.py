"""The sweep summary's plots (PNG, matplotlib's Agg backend): test AUC against inference embedding bytes, test
AUC during training, and validation AUC against the learning rate; ``figure`` and ``finish`` also make the
Pareto plot (``mlet.repro.pareto``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from mlet.repro.experiments import PROTOCOLS, lr_text
from mlet.repro.protocols import Selection, by_config_and_lr
from mlet.repro.run_results import RunResult


def panels(selections: Sequence[Selection]) -> list[tuple[str, str]]:
    """The (protocol, optimizer) pairs present, in a fixed order."""
    return sorted({(s.protocol, s.optimizer) for s in selections}, key=lambda p: (PROTOCOLS.index(p[0]), p[1]))


def finish(fig, axes, path: Path, **legend) -> None:
    """Grid and legend (``legend``: its keyword arguments) on every panel; write the PNG (:func:`save_png`)."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(**legend)
    save_png(fig, path)


def save_png(fig, path: Path) -> None:
    """Lay out ``fig``, write it to ``path`` as PNG and close it: pyplot keeps every figure it made until it is
    closed, so a process that plots often (``full_scale.py --report``: the summary's plots, then one per
    optimizer's rank analysis; the test suite) grew with each (matplotlib warns past 20)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure(count: int, width: float = 5.5, height: float = 4.2):
    """A matplotlib figure with ``count`` panels (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(count, 2)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:count])


def plot_auc_vs_size(selections: Sequence[Selection], path: Path) -> None:
    """Test AUC (mean ± std) against inference embedding bytes: the baseline's d curve, one MLET curve per K."""
    pairs = panels(selections)
    fig, axes = figure(len(pairs))
    for ax, (protocol, optimizer) in zip(axes, pairs):
        group = [s for s in selections if (s.protocol, s.optimizer) == (protocol, optimizer) and not s.config.method]
        hidden_values = sorted({s.config.hidden for s in group})
        for k in hidden_values:
            points = sorted((s for s in group if s.config.hidden == k), key=lambda s: s.config.dim)
            x = [p.runs[0].inference_embedding_bytes for p in points]
            y, err = zip(*(p.stat("test_auc") for p in points))
            style = {"color": "black", "marker": "o", "linewidth": 2} if k == 0 else {"marker": "s", "linestyle": "--"}
            ax.errorbar(x, y, yerr=err, capsize=3, label="baseline" if k == 0 else f"MLET K={k}", **style)
            for p, xi, yi in zip(points, x, y):
                ax.annotate(
                    f"d={p.config.dim}", (xi, yi), textcoords="offset points", xytext=(3, -10 if k else 5), fontsize=7
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("inference embedding size (bytes, collapsed tables)")
        ax.set_ylabel("test AUC (mean ± std over seeds)")
        ax.set_title(f"{protocol} protocol, {optimizer}")
    finish(fig, axes, path, fontsize=8)


def mean_curve(runs: Sequence[RunResult]) -> tuple[list[int], list[float]]:
    """Mean test AUC over seeds at each iteration every seed was tested at."""
    common = set.intersection(*({h["iteration"] for h in r.history} for r in runs)) if runs else set()
    iterations = sorted(common)
    values = [
        sum(next(h["auc"] for h in r.history if h["iteration"] == i) for r in runs) / len(runs) for i in iterations
    ]
    return iterations, values


def curve_hidden(selections: Sequence[Selection]) -> int:
    """The MLET K shown in the step plot: 64 (the paper's) if present, else the largest."""
    ks = {s.config.hidden for s in selections if s.config.is_mlet and not s.config.method}
    return 64 if 64 in ks else max(ks, default=0)


def plot_auc_vs_step(selections: Sequence[Selection], path: Path) -> None:
    """Test AUC during training (mean over seeds): baselines solid, MLET (one K) dashed, colour by d."""
    import matplotlib.cm as cm

    pairs = panels(selections)
    k_shown = curve_hidden(selections)
    dims = sorted({s.config.dim for s in selections})
    colors = {d: cm.viridis(i / max(1, len(dims) - 1)) for i, d in enumerate(dims)}
    fig, axes = figure(len(pairs))
    for ax, (protocol, optimizer) in zip(axes, pairs):
        for s in sorted(selections, key=lambda s: s.config):
            if (
                (s.protocol, s.optimizer) != (protocol, optimizer)
                or s.config.hidden not in (0, k_shown)
                or s.config.method
            ):
                continue
            x, y = mean_curve(s.runs)
            ax.plot(
                x,
                y,
                color=colors[s.config.dim],
                linestyle="--" if s.config.is_mlet else "-",
                marker="." if s.config.is_mlet else None,
                label=s.config.title,
            )
        ax.set_xlabel("training step")
        ax.set_ylabel("test AUC (mean over seeds)")
        ax.set_title(f"{protocol} protocol, {optimizer}")
    finish(fig, axes, path, fontsize=7, ncol=2)


def plot_lr_curves(results: Sequence[RunResult], tuned: Sequence[Selection], path: Path) -> None:
    """Mean validation AUC against learning rate per config; the tuned protocol's choice circled."""
    import matplotlib.cm as cm

    groups = by_config_and_lr(results)
    optimizers = sorted({opt for opt, _ in groups})
    chosen = {(s.optimizer, s.config): s.lr for s in tuned}
    fig, axes = figure(len(optimizers))
    for ax, optimizer in zip(axes, optimizers):
        configs = sorted(c for opt, c in groups if opt == optimizer)
        for i, config in enumerate(configs):
            by_lr = groups[(optimizer, config)]
            lrs = list(by_lr)
            values = [sum(r.val_auc for r in runs) / len(runs) for runs in by_lr.values()]
            color = cm.tab20(i % 20)
            ax.plot(lrs, values, marker="o", linestyle="--" if config.is_mlet else "-", color=color, label=config.title)
            best = chosen.get((optimizer, config))
            if best in by_lr:
                ax.scatter([best], [values[lrs.index(best)]], s=120, facecolors="none", edgecolors=color)
        ax.set_xscale("log")
        ticks = sorted({lr for opt, c in groups if opt == optimizer for lr in groups[(opt, c)]})
        ax.set_xticks(ticks, [lr_text(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("learning rate (missing points: a seed diverged)")
        ax.set_ylabel("validation AUC (mean over seeds)")
        ax.set_title(f"{optimizer}: learning-rate grid (circled: tuned choice)")
    finish(fig, axes, path, fontsize=6, ncol=2)
