"""What a run's ``--results-json`` holds beside its metrics: the steady training rate and the one-time
seconds (from the logged windows), the parameter and byte counts, and the file written atomically as strict
JSON."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from dlrm_model import DLRM, ModelConfig
from mlet.core.errors import UserError
from mlet.core.files import replace_atomically
from mlet.training.checkpoints import bytes_report


def steady_rate(windows: list[tuple[int, float]]) -> float | None:
    """The median samples/s of the logged windows: the run's pace once started, without the one-time costs that
    fall in a few windows (the first: CUDA graph capture, kernel compilation; an epoch's last, smaller batch,
    which runs eagerly); ``None`` with fewer than three windows."""
    rates = [n / t for n, t in windows if t > 0]
    return statistics.median(rates) if len(rates) >= 3 else None


def one_time_seconds(windows: list[tuple[int, float]]) -> float | None:
    """Training seconds beyond what the samples take at the :func:`steady_rate`: the run's one-time costs
    (kernel compilation, CUDA graph capture, eager warm-up and last batches); ``None`` without a steady rate.
    At least 0: where there are none, windows faster than the median (noise) would make the difference
    negative."""
    rate = steady_rate(windows)
    if rate is None:
        return None
    return max(0.0, sum(t for _, t in windows) - sum(n for n, _ in windows) / rate)


def parameter_report(
    model: DLRM, all_sum: Callable[[int], Tensor | float] | None = None, trained: ModelConfig | None = None
) -> dict:
    """Parameter counts and bytes for training and inference (collapsed; for quantized tables their exact packed
    bytes). The training ones are of ``trained``, the architecture the model was trained as (a collapsed or
    quantized model's MLET tables before collapsing), by default the model as built. ``all_sum``: under torchrun,
    where each process holds its own tables, the sum over the processes (``Parallel.all_sum``, a collective) that
    makes the served bytes the whole model's."""
    elem = next(model.bottom.parameters()).element_size()
    # collapsing and quantizing keep every table's layout, so the trained architecture's inference counts are the
    # model's own: one report of it serves both sides (the quantized tables' bytes replace its float ones below)
    report = bytes_report((trained or model.config).parameter_counts(), elem)
    served = model.tables.inference_bytes()
    served = int(all_sum(served) if all_sum is not None else served)
    report["inference"]["bytes"] += served - report["embedding_inference_bytes"]
    report["embedding_inference_bytes"] = served
    return report


def json_safe(value: object) -> object:
    """NaN/inf -> None, recursively, so the results file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str, payload: dict) -> None:
    """Write ``payload`` atomically as strict JSON (:class:`UserError` naming ``path`` if it cannot be written)."""
    target = Path(path)
    text = json.dumps(json_safe(payload), indent=2, sort_keys=False) + "\n"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(target, lambda tmp: tmp.write_text(text))
    except OSError as error:
        raise UserError(f"{path}: cannot write the results ({error.strerror or error})") from None
