"""Checkpoints: collapse, inspection, ONNX export.

Commands (python checkpoint.py COMMAND -h for each one's flags):

    checkpoint.py collapse IN OUT        # training -> inference checkpoint
    checkpoint.py quantize IN OUT --bits 8|4   # row-wise int8/int4 tables (collapsed or baseline IN)
    checkpoint.py info FILE [--json]     # kind, sizes, tables, args, metrics
    checkpoint.py export-onnx IN OUT     # ONNX graph for serving (collapsed or two-layer)

What a checkpoint holds, resume, collapse and the ONNX model: docs/checkpoints.md.
"""

from __future__ import annotations

from mlet.core.signals import interrupt_exits  # the standard library only: loaded before the imports it guards

with interrupt_exits("checkpoint.py"):  # Ctrl-C while the modules import (torch: seconds): as in the run
    import argparse
    import contextlib
    import json
    import math
    import os
    import sys
    import textwrap
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    import torch

    from dlrm_model import ModelConfig
    from mlet.cli.reduction import describe_tables, stored_tables
    from mlet.core.config import TableConfig
    from mlet.core.errors import (
        OneLineParser,
        UserError,
        check_distinct_outputs,
        check_output_file,
        run_reporting_errors,
    )
    from mlet.core.signals import exit_status
    from mlet.serving.quantize import BITS, ROW_OVERHEAD, packed_width, quantized_checkpoint, size_change
    from mlet.serving.quantize import model_from_checkpoint as quantized_model
    from mlet.training.checkpoints import (
        FORMAT,
        INFERENCE,
        TRAINING,
        atomic_save,
        bytes_report,
        collapsed_checkpoint,
        dashed,
        element_size,
        flag_name,
        load_checkpoint,
        model_from_checkpoint,
        refuse_quantized,
        trained_hidden,
        training_config,
    )

PROG = "checkpoint.py"

# -- info --------------------------------------------------------------------


def mib(n: int | float) -> str:
    """Bytes as ``12.3 MiB`` (or KiB / GiB when those read better)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def tensor_bytes(value: object) -> int:
    """Bytes of all tensors in a nested structure of dicts and lists."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def table_summary(t: int, table: TableConfig, elem: int, quantized_bits: int | None) -> dict:
    """One table of ``info``: rows, kind, shape as trained, training and inference bytes."""
    training, inference = table.parameter_counts()
    served = inference * elem
    if quantized_bits is not None:
        projection = table.width * table.dim * elem if table.projected else 0
        served = sum(n * packed_width(table.width, quantized_bits) for n in table.parts) + projection
    return {
        "table": t,
        "rows": table.rows,
        "kind": table.kind,
        "trained_as": table_shape(table),
        "training_bytes": training * elem,
        "inference_bytes": served,
    }


def table_shape(table: TableConfig) -> str:
    """``16``, ``64x16`` (MLET), ``qr 1250+4 x16``, ``md 4->16`` (MLET inside: ``md 16x4->16``)."""
    width = f"{table.hidden}x{table.width}" if table.hidden else f"{table.width}"
    if table.kind == "qr":
        quotient, remainder = table.parts
        return f"qr {quotient}+{remainder} x{width}"
    return f"md {width}->{table.dim}" if table.kind == "md" else width


def summary(ckpt: dict, path: str | os.PathLike) -> dict:
    """What ``info`` shows, as plain data."""
    config = ModelConfig.from_dict(ckpt["model_config"])
    trained = training_config(ckpt)
    elem = element_size(ckpt)
    quantized = ckpt.get("quantized")
    bits = quantized["bits"] if quantized else None
    tables = [table_summary(t, table, elem, bits) for t, table in enumerate(trained.table_configs())]
    history = ckpt.get("history") or []
    return {
        "file": str(path),
        "file_bytes": Path(path).stat().st_size,
        "kind": ckpt.get("kind"),
        "version": ckpt.get("version"),
        "torch": ckpt.get("torch"),
        "stored_model": config.to_dict(),
        "trained_model": trained.to_dict(),
        "collapsed_from_hidden": (ckpt.get("collapsed_from") or {}).get("mlet_hidden"),
        "position": ckpt.get("position"),
        "optimizer": (ckpt.get("optimizer") or {}).get("optimizer"),
        "optimizer_state_bytes": tensor_bytes(ckpt.get("optimizer")),
        "stored_parameter_bytes": tensor_bytes(ckpt["model"]),
        "parameters": served_report(trained, elem, quantized),
        "quantized": quantized,
        "tables": tables,
        "final": history[-1] if history else None,
        "best": ckpt.get("best"),
        "args": ckpt.get("args") or {},
        "distributed": ckpt.get("distributed"),
    }


def served_report(trained: ModelConfig, elem: int, quantized: dict | None) -> dict:
    """The parameters entry of ``info``: ``bytes_report``, with a quantized checkpoint's exact table bytes."""
    report = bytes_report(trained.parameter_counts(), elem)
    if quantized:
        served = int(quantized["embedding_bytes"])
        report["inference"]["bytes"] += served - report["embedding_inference_bytes"]
        report["embedding_inference_bytes"] = served
    return report


def _metrics_line(name: str, m: dict | None, whose: str = "") -> str:
    """``final auc 0.8, logloss 0.45, accuracy 0.79 (epoch 0, iteration 20, 2,000 test samples)``; ``whose`` test it
    was goes in the brackets where it is not the file's model's."""
    if not m:
        return f"{name} none recorded in the file"
    values = ", ".join(
        f"{key} {m[key]:.6f}"
        for key in ("auc", "logloss", "accuracy")
        if isinstance(m.get(key), float) and math.isfinite(m[key])
    )
    return (
        f"{name} {values} (epoch {m.get('epoch')}, iteration {m.get('iteration')}, "
        f"{m.get('samples', 0):,} test samples{'; ' + whose if whose else ''})"
    )


def metrics_rows(s: dict) -> list[tuple[str, str]]:
    """The ``info`` rows of the last and best test the file records. A quantized file records only the float
    model's last test (``quantized.float_final``: the quantized model was not tested when it was written), shown
    in the same form, said to be the float model's."""
    final, whose, quantized = s["final"], "", s.get("quantized")
    if final is None and quantized and quantized.get("float_final"):
        final, whose = quantized["float_final"], f"the float model's, before int{quantized['bits']} quantization"
    return [("metrics", _metrics_line("final", final, whose)), ("", _metrics_line("best", s["best"]))]


def kind_text(s: dict, mlet_hidden: int) -> str:
    """What the file is for: resumable training, or inference from plain, collapsed or quantized tables."""
    quantized = s.get("quantized")
    if s["kind"] == TRAINING:
        return "training (resumable)"
    if quantized:
        return f"inference (int{quantized['bits']} row-wise quantized tables; no optimizer state)"
    if mlet_hidden:
        return f"inference (collapsed from MLET K={mlet_hidden}; no optimizer state)"
    return "inference (plain tables; no optimizer state)"


def stored_as_text(stored: ModelConfig, quantized: dict | None) -> str:
    """How the file holds the tables: MLET's two layers, plain tables, or composite ones; quantized or not."""
    text = f"MLET K={stored.mlet_hidden}" if stored.mlet_hidden else "plain d-wide tables"
    if stored.is_composite:
        text = describe_tables(stored)  # its phrases name the tables already ("... on 2 tables")
    return text + (f", int{quantized['bits']}" if quantized else "")


def summary_rows(s: dict) -> list[tuple[str, str]]:
    """The ``info`` table's named rows: file, kind, position, model, sizes, metrics."""
    trained, stored = ModelConfig.from_dict(s["trained_model"]), ModelConfig.from_dict(s["stored_model"])
    k = trained.mlet_hidden
    quantized = s.get("quantized")
    pos = s["position"] or {}
    params = s["parameters"]
    train_b, infer_b = params["training"]["bytes"], params["inference"]["bytes"]
    table_train_b, table_infer_b = params["embedding_training_bytes"], params["embedding_inference_bytes"]
    cause, larger = inference_cause(k, quantized), larger_because(quantized)
    rows = [
        ("file", f"{s['file']} ({mib(s['file_bytes'])})"),
        ("kind", kind_text(s, k)),
        ("format", f"{FORMAT} v{s['version']}, torch {s['torch']}"),
        (
            "position",
            f"epoch {pos.get('epoch')}, batch {pos.get('batch')}, iteration {pos.get('iteration')}" if pos else "-",
        ),
        (
            "model",
            f"{len(trained.table_sizes)} tables, {sum(trained.table_sizes):,} rows, d={trained.dim}, "
            f"{describe_tables(trained)} (stored as {stored_as_text(stored, quantized)});"
            f" bottom {dashed(trained.bottom_mlp)}, top {trained.interaction_width()}-{dashed(trained.top_mlp)}, "
            f"interaction {trained.interaction}",
        ),
    ]
    if s.get("distributed"):
        rows.append(("processes", processes_line(s["distributed"])))
    rows += [
        ("optimizer", f"{s['optimizer']} (state {mib(s['optimizer_state_bytes'])})" if s["optimizer"] else "none"),
        ("stored", f"{mib(s['stored_parameter_bytes'])} of parameters"),
        (
            "parameters",
            f"training {params['training']['count']:,} ({mib(train_b)}), "
            f"inference {params['inference']['count']:,} ({mib(infer_b)}): the whole model at inference is "
            + size_change(train_b, infer_b, cause, larger),
        ),
        (
            "embeddings",
            f"training {mib(table_train_b)}, inference {mib(table_infer_b)}: the tables at inference are "
            + size_change(table_train_b, table_infer_b, cause, larger),
        ),
    ]
    if quantized:
        rows.append(("quantized", quantized["layout"]))
    return [*rows, *metrics_rows(s)]


def table_lines(tables: list[dict]) -> list[str]:
    """One line per table: rows, how it was trained, its bytes in training and at inference."""
    lines = [f"{'table':>5} {'rows':>14} {'trained as':>18} {'training':>12} {'inference':>12}"]
    for t in tables:
        training, inference = mib(t["training_bytes"]), mib(t["inference_bytes"])
        lines.append(f"{t['table']:>5} {t['rows']:>14,} {t['trained_as']:>18} {training:>12} {inference:>12}")
    return lines


def args_lines(args: dict) -> list[str]:
    """The recorded flags, wrapped at 120 columns (their values that are plain scalars)."""
    flags = " ".join(
        f"{flag_name(key)}={value}" for key, value in sorted(args.items()) if isinstance(value, (str, int, float, bool))
    )
    wrapped = textwrap.wrap(
        flags,
        width=120,
        initial_indent="args        ",
        subsequent_indent=" " * 12,
        break_on_hyphens=False,
        break_long_words=False,
    )
    return wrapped or ["args        -"]


def format_summary(s: dict) -> str:
    """The human-readable ``info`` table."""
    lines = [f"{name:<11} {value}" for name, value in summary_rows(s)]
    return "\n".join([*lines, "", *table_lines(s["tables"]), "", *args_lines(s["args"])])


def processes_line(distributed: dict) -> str:
    """Who held which tables in the multi-process run that wrote the checkpoint (stored in one-process layout)."""
    plan = distributed.get("plan") or {}
    owners = "; ".join(
        f"rank {rank}: tables {','.join(map(str, tables)) or 'none'}"
        for rank, tables in enumerate(plan.get("tables_of_rank") or [])
    )
    return (
        f"trained by {distributed.get('world_size')} ({distributed.get('backend')}){': ' + owners if owners else ''};"
        " stored whole, loads in any number of processes"
    )


def inference_cause(hidden: int, quantized: dict | None) -> str:
    """What makes a checkpoint's inference model differ in size from its training one: ``(MLET collapsed)``,
    ``(int8 tables)``, both, or nothing."""
    causes = [*(["MLET collapsed"] if hidden else []), *([f"int{quantized['bits']} tables"] if quantized else [])]
    return f"({', '.join(causes)})" if causes else ""


def larger_because(quantized: dict | None) -> str:
    """Why inference could be larger than training: only row-wise quantized tables' per-row scales and biases."""
    return ROW_OVERHEAD if quantized else ""


# -- command line ------------------------------------------------------------


@contextlib.contextmanager
def about(path: str) -> Iterator[None]:
    """Prefix a :class:`UserError` raised inside with the file it is about."""
    try:
        yield
    except UserError as error:
        raise UserError(f"{path}: {error}") from None


def cmd_collapse(args: argparse.Namespace) -> None:
    """``collapse IN OUT``."""
    check_distinct_outputs({"IN": args.input, "OUT": args.output})
    check_output_file("OUT", args.output)
    ckpt = load_checkpoint(args.input, mmap=True)
    with about(args.input):
        if ckpt.get("kind") == INFERENCE:
            # it is copied, not rebuilt: weights that do not fit its model_config are refused before the copy
            # is written as if it were usable
            check_weights(ckpt)
            print(f"{args.input} is already an inference checkpoint; writing it unchanged")
        out = collapsed_checkpoint(ckpt)
    before = Path(args.input).stat().st_size
    atomic_save(out, args.output)
    after = Path(args.output).stat().st_size
    hidden, bits = trained_hidden(out), (out.get("quantized") or {}).get("bits")
    collapsed = f"K={hidden} -> " if hidden else ""
    tables = stored_tables(ModelConfig.from_dict(out["model_config"]), bits)
    print(f"wrote {args.output}: inference checkpoint, {collapsed}{tables}, {mib(before)} -> {mib(after)}")


def cmd_quantize(args: argparse.Namespace) -> None:
    """``quantize IN OUT --bits 8|4``."""
    check_distinct_outputs({"IN": args.input, "OUT": args.output})
    check_output_file("OUT", args.output)
    ckpt = load_checkpoint(args.input, mmap=True)
    with about(args.input):
        refuse_quantized(ckpt, "quantizing")
        hidden = ModelConfig.from_dict(ckpt["model_config"]).mlet_hidden
        if hidden:
            raise UserError(
                f"two-layer MLET tables (K={hidden}): collapse them first "
                f"(python checkpoint.py collapse {args.input} COLLAPSED.pt), then quantize COLLAPSED.pt"
            )
        model = model_from_checkpoint(ckpt)
    out = quantized_checkpoint(ckpt, args.bits, model)
    atomic_save(out, args.output)
    q = out["quantized"]
    before, after = Path(args.input).stat().st_size, Path(args.output).stat().st_size
    trained, elem = training_config(out), element_size(out)
    whole = [served_report(trained, elem, quantized)["inference"]["bytes"] for quantized in (None, q)]
    print(
        f"wrote {args.output}: int{args.bits} row-wise tables; the tables {q['float_embedding_bytes']:,} -> "
        f"{q['embedding_bytes']:,} bytes ({size_change(q['float_embedding_bytes'], q['embedding_bytes'])}), "
        f"the whole model {whole[0]:,} -> {whole[1]:,} bytes ({size_change(whole[0], whole[1], larger_because='')}); "
        f"file {mib(before)} -> {mib(after)}"
    )


def check_weights(ckpt: dict) -> None:
    """A :class:`UserError` where the weights do not fit the checkpoint's ``model_config`` (a tensor of another
    shape, a missing or an extra one): the model is built as every loader builds it, float or quantized."""
    (quantized_model if ckpt.get("quantized") else model_from_checkpoint)(ckpt)


def cmd_info(args: argparse.Namespace) -> None:
    """``info FILE``; a file whose weights do not fit its model is refused, as every other command refuses it."""
    ckpt = load_checkpoint(args.file, mmap=True)
    with about(args.file):
        check_weights(ckpt)
    s = summary(ckpt, args.file)
    print(json.dumps(s, indent=2, default=str) if args.json else format_summary(s))


def cmd_export_onnx(args: argparse.Namespace) -> None:
    """``export-onnx IN OUT``."""
    from mlet.serving.onnx_export import export_onnx  # onnx is imported only when exporting

    check_distinct_outputs({"IN": args.input, "OUT": args.output, "OUT (external data)": f"{args.output}.data"})
    check_output_file("OUT", args.output)
    ckpt = load_checkpoint(args.input, mmap=True)
    with about(args.input):
        refuse_quantized(ckpt, "the ONNX export")
        model = model_from_checkpoint(ckpt)
    report = export_onnx(model, args.output, verify_outputs=args.verify)
    where = f", weights in {report['external_data']}" if report["external_data"] else ""
    tables = f"MLET K={model.config.mlet_hidden}" if model.config.mlet_hidden else "plain tables"
    if model.config.is_composite:
        tables = (
            f"{describe_tables(model.config.collapsed())}; MLET collapsed first"
            if model.config.mlet_hidden
            else (describe_tables(model.config))
        )
    print(f"wrote {args.output} ({tables}{where})")
    if report.get("max_abs_diff") is not None:
        batch_sizes = ", ".join(map(str, report["batch_sizes"]))
        print(
            f"onnxruntime check: max abs diff {report['max_abs_diff']:.3g} vs torch at batch sizes {batch_sizes} "
            "(multi-hot bags)"
        )


def build_parser() -> OneLineParser:
    """The ``checkpoint.py`` command line."""
    p = OneLineParser(prog=PROG, description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    c = sub.add_parser(
        "collapse", help="write the inference checkpoint (MLET tables folded to n x d, no optimizer state)"
    )
    c.add_argument("input", metavar="IN")
    c.add_argument("output", metavar="OUT")
    c.set_defaults(handler=cmd_collapse)
    q = sub.add_parser(
        "quantize", help="write a checkpoint with row-wise int8 or int4 tables (from a collapsed or baseline one)"
    )
    q.add_argument("input", metavar="IN")
    q.add_argument("output", metavar="OUT")
    q.add_argument("--bits", type=int, choices=BITS, required=True, help="8: int8 rows; 4: int4, two values a byte")
    q.set_defaults(handler=cmd_quantize)
    i = sub.add_parser("info", help="kind, sizes, tables, args and metrics of a checkpoint")
    i.add_argument("file", metavar="FILE")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")
    i.set_defaults(handler=cmd_info)
    e = sub.add_parser(
        "export-onnx", help="export the model as ONNX (dense [B,D], indices [N], offsets [T*B+1] -> probabilities [B])"
    )
    e.add_argument("input", metavar="IN")
    e.add_argument("output", metavar="OUT")
    e.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare onnxruntime's outputs with torch's",
    )
    e.set_defaults(handler=cmd_export_onnx)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input ends with one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    return run_reporting_errors(PROG, lambda: args.handler(args))


def cli() -> None:
    """The ``dlrm-mlet-checkpoint`` console command (``python checkpoint.py``)."""
    sys.exit(exit_status(PROG, main))


if __name__ == "__main__":
    cli()
