"""What the reproduction reads from its runs' results JSONs (``dlrm_mlet.py --results-json``) and sweep records.

A run's results JSON holds the test metrics (``final``) and the validation metrics (``val``) of the same model,
its flags, and, for evaluations, the precision of the tables scored. Runs are compared only when they share
the flags of :func:`mlet.repro.experiments.shared_args`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlet.core.config import ModelConfig
from mlet.core.errors import UserError
from mlet.repro.experiments import Config, RunSpec, round_lr, shared_args


@dataclass
class RunResult:
    """What the summaries need from one results JSON (``quantized``: the same model with int8/int4 tables, by
    bits, as :meth:`variant` gives it)."""

    spec: RunSpec
    test_auc: float
    test_logloss: float
    val_auc: float
    val_logloss: float
    samples_per_second: float
    inference_embedding_bytes: int
    training_embedding_bytes: int
    history: list[dict] = field(default_factory=list)
    path: str = ""
    shared: dict = field(default_factory=dict)  # shared_args of the run's flags
    quantized: dict[int, dict] = field(default_factory=dict)
    bits: int | None = None  # the precision of the tables scored: None float32, 8/4 quantized

    def variant(self, bits: int | None) -> RunResult:
        """This run as the model with ``bits``-bit quantized tables (its metrics and served bytes); ``None``: as
        trained (float32)."""
        if bits is None:
            return self
        q = self.quantized[bits]
        return replace(
            self,
            test_auc=q["test_auc"],
            test_logloss=q["test_logloss"],
            val_auc=q["val_auc"],
            inference_embedding_bytes=q["inference_embedding_bytes"],
            history=[],
            quantized={},
            bits=bits,
        )


def number(value: float | int | str | None) -> float:
    """A JSON metric as a float (``None``, for NaN in strict JSON, is NaN)."""
    return math.nan if value is None else float(value)


def spec_from_payload(payload: dict) -> RunSpec:
    """The run a results JSON describes, from its recorded flags (not from its file name); for an evaluation
    (``--inference-only``), the model of its checkpoint: the built model's tables and the MLET width it was
    trained with, whatever the flags of the evaluation said."""
    args = payload["args"]
    dim, hidden = int(args["arch_sparse_feature_size"]), int(args["mlet_hidden"])
    qr, md, collisions = args.get("qr_flag"), args.get("md_flag"), args.get("qr_collisions")
    built, loaded = payload.get("model_config"), payload.get("checkpoint") or {}
    if args.get("inference_only") and built and "trained_mlet_hidden" in loaded:
        hidden = int(loaded["trained_mlet_hidden"] or 0)
        qr, md, collisions = built.get("qr_flag"), bool(built.get("md_dims")), built.get("qr_collisions")
    if qr:
        config = Config(dim, hidden, "qr", collisions=int(collisions))
    elif md:
        config = Config(dim, hidden, "md", temperature=float(args["md_temperature"]))
    else:
        config = Config(dim, hidden)
    return RunSpec(str(args["optimizer"]), config, round_lr(float(args["learning_rate"])), int(args["numpy_rand_seed"]))


def result_from_payload(payload: dict, path: str = "") -> RunResult:
    """A :class:`RunResult` from a ``--results-json`` payload (``val`` is NaN when the run had no validation split)."""
    final, val = payload["final"], payload.get("val") or {}
    params = payload["parameters"]
    return RunResult(
        spec=spec_from_payload(payload),
        test_auc=number(final.get("auc")),
        test_logloss=number(final.get("logloss")),
        val_auc=number(val.get("auc")),
        val_logloss=number(val.get("logloss")),
        samples_per_second=number(payload.get("train_samples_per_second")),
        inference_embedding_bytes=int(params["embedding_inference_bytes"]),
        training_embedding_bytes=int(params["embedding_training_bytes"]),
        history=[
            {"iteration": h["iteration"], "auc": number(h.get("auc")), "logloss": number(h.get("logloss"))}
            for h in payload.get("history") or []
        ],
        path=path,
        shared=shared_in_run_dir_terms(payload["args"]),
        quantized={int(q["bits"]): quantized_metrics(q) for q in payload.get("quantized") or []},
        bits=evaluated_bits(payload),
    )


def shared_in_run_dir_terms(args: dict) -> dict:
    """A results JSON's :func:`~mlet.repro.experiments.shared_args`, paths inside its sweep directory (the folder
    above its ``results/``, from its ``--results-json``) as ``./NAME``: runs of a sweep directory moved or copied
    between sessions name its data by other paths, and still compare."""
    shared = shared_args(args)
    results_json = args.get("results_json")
    if not isinstance(results_json, str) or Path(results_json).parent.name != "results":
        return shared
    run_dir = str(Path(results_json).parent.parent)
    return {key: in_run_dir(value, run_dir) if isinstance(value, str) else value for key, value in shared.items()}


def in_run_dir(value: str, run_dir: str) -> str:
    """A path as recorded by a sweep in ``run_dir`` (the directory as that sweep named it): ``./NAME`` when it lies
    inside it, else as it is. Only text with a ``/`` counts as a path (``kaggle`` or ``64-32-1`` is a flag's
    value); one relative and the other absolute are compared made absolute (both were relative to the directory
    the sweep ran in)."""
    if os.sep not in value:
        return value
    path, root = value, run_dir
    if os.path.isabs(path) != os.path.isabs(root):
        path, root = os.path.abspath(path), os.path.abspath(root)
    path, root = os.path.normpath(path), os.path.normpath(root)
    if path == root:
        return "."
    prefix = root.rstrip(os.sep) + os.sep
    return "./" + path.removeprefix(prefix) if path.startswith(prefix) else value


def flags_in_run_dir(flags: Iterable[str], run_dir: str) -> list[str]:
    """Training flags (``--flag=value``) with each value naming a path inside ``run_dir`` as ``./NAME``
    (:func:`in_run_dir`): how ``sweep.json`` records them, so that a moved sweep directory keeps its setup."""
    out = []
    for flag in flags:
        name, equals, value = flag.partition("=")
        out.append(f"{name}={in_run_dir(value, run_dir)}" if equals and value else flag)
    return out


def evaluated_bits(payload: dict) -> int | None:
    """The bits of the quantized tables an evaluation scored (``--inference-only`` on a checkpoint of
    ``checkpoint.py quantize``, or with ``--quantize-emb-with-bit``); None for float tables. Recorded as
    ``served_bits`` since 2026-12-01; in older files told by the served embedding bytes: row-wise packed rows
    (``d + 8`` or ``ceil(d / 2) + 4`` bytes) never take the ``4 d`` bytes of float32 ones, so the bytes match
    at most one precision (:func:`quantized_bytes`)."""
    if not payload["args"].get("inference_only"):
        return None
    if "served_bits" in payload:
        return payload["served_bits"]
    if "model_config" not in payload:
        return None
    served = int(payload["parameters"]["embedding_inference_bytes"])
    config = ModelConfig.from_dict(payload["model_config"])
    return next((bits for bits in (8, 4) if quantized_bytes(config, bits) == served), None)


def quantized_bytes(config: ModelConfig, bits: int) -> int:
    """Served embedding bytes of ``config``'s collapsed tables quantized to ``bits`` (``mlet.serving.quantize``'s
    packed rows; mixed-dimension projections stay float32)."""
    from mlet.serving.quantize import packed_width  # imports torch and the model: only for evaluations

    total = 0
    for table in config.table_configs():
        total += sum(rows * packed_width(table.width, bits) for rows in table.parts)
        total += 4 * table.width * table.dim if table.projected else 0
    return total


def quantized_metrics(entry: dict) -> dict:
    """One entry of a results JSON's ``quantized`` list, as :meth:`RunResult.variant` reads it."""
    return {
        "test_auc": number(entry["final"].get("auc")),
        "test_logloss": number(entry["final"].get("logloss")),
        "val_auc": number((entry.get("val") or {}).get("auc")),
        "inference_embedding_bytes": int(entry["parameters"]["embedding_inference_bytes"]),
    }


def load_results(paths: Iterable[Path]) -> list[RunResult]:
    """Read results JSONs; a file that is not one is a :class:`UserError` naming it."""
    results = []
    for path in paths:
        try:
            payload = json.loads(Path(path).read_text())
            if isinstance(payload, dict) and {"settings", "runs"} <= payload.keys() and "final" not in payload:
                parent = Path(path).parent
                raise UserError(f"{path}: a sweep's record, not a results JSON: give its directory, {parent}")
            results.append(result_from_payload(payload, str(path)))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UserError(f"{path}: not a dlrm_mlet.py results JSON ({type(error).__name__}: {error})") from None
    return results


def read_results(paths: Iterable[Path]) -> tuple[list[RunResult], dict[Path, str]]:
    """The results JSONs among ``paths`` that read as such, and the others (a killed writer, a full disk, an edit)
    with why, in one line naming the file."""
    results: list[RunResult] = []
    damaged: dict[Path, str] = {}
    for path in paths:
        try:
            results += load_results([path])
        except UserError as error:
            damaged[Path(path)] = str(error)
    return results, damaged


def sweep_record(run_dir: Path) -> dict | None:
    """A sweep directory's ``sweep.json`` (settings, sessions, runs); None without one, a :class:`UserError`
    naming a damaged one."""
    manifest = Path(run_dir) / "sweep.json"
    if not manifest.exists():
        return None
    try:
        record = json.loads(manifest.read_text())
        if not isinstance(record["settings"], dict):
            raise TypeError("settings")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{manifest}: not a sweep record ({type(error).__name__})") from None
    return record


def check_comparable(results: Sequence[RunResult]) -> None:
    """A :class:`UserError` naming the first result trained with other shared flags than the first one (flags
    both know)."""
    first = results[0]
    for r in results[1:]:
        differing = sorted(k for k in first.shared.keys() & r.shared.keys() if first.shared[k] != r.shared[k])
        if differing:
            key = differing[0]
            raise UserError(
                f"{r.path}: trained with other flags than {first.path} "
                f"(--{key.replace('_', '-')}: {r.shared[key]!r} against {first.shared[key]!r});"
                " one summary compares runs of one setup: move the odd ones out"
            )


def results_dir(run_dir: Path) -> Path:
    """Where a sweep keeps its runs' JSONs."""
    return Path(run_dir) / "results"


def results_files(run_dir: Path) -> list[Path]:
    """A sweep directory's results JSONs (``results/*.json``; a damaged one set aside as ``.json.damaged`` is not
    one)."""
    return sorted(results_dir(run_dir).glob("*.json"))


def load_run_dir(run_dir: Path) -> list[RunResult]:
    """Every finished run of a sweep directory."""
    return load_results(results_files(run_dir))
