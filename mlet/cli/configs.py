"""The command line of ``dlrm_mlet.py`` checked and turned into typed configs: :func:`run_config` gives the
:class:`Run` (model, data and training configs, the command's files and devices, the flag snapshot that
checkpoints and results keep); a bad flag raises a one-line :class:`~mlet.core.errors.UserError` naming it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from mlet.cli import reduction
from mlet.cli.parser import DEFAULT_EMBEDDING_SIZE, DEFAULT_OPTIMIZER, build_parser
from mlet.cli.reporting import Reporting, check_reporting_files, reporting_config, reporting_files
from mlet.cli.upstream import check_foreign_flags
from mlet.core.config import (
    FUSED_OPTIMIZERS,
    TORCH_OPTIMIZERS,
    DataConfig,
    DatasetConfig,
    MixedDimensionConfig,
    ModelConfig,
    RandomConfig,
    SyntheticConfig,
    TrainConfig,
)
from mlet.core.errors import (
    UserError,
    check_distinct_outputs,
    check_output_file,
    check_seed,
    flag_value,
    require_at_least,
)
from mlet.core.launch import is_main_process
from mlet.data.flags import check_given_table_sizes, dataset_config
from mlet.data.preprocessing.cache import DENSE_INPUTS, cache_settings
from mlet.data.synthetic import MODEL_FLAGS, check_model_flags
from mlet.parallel import process_group
from mlet.training.checkpoints import check_file, flag_name
from mlet_layers import parse_projection_init


def parse_dashed(flag: str, text: str, minimum: int = 1) -> list[int]:
    """``"13-512-256"`` -> ``[13, 512, 256]``; each value at least ``minimum``."""
    try:
        values = [int(v) for v in text.split("-")]
    except ValueError:
        raise UserError(f"{flag}: expected dash-separated integers, got '{text}'") from None
    bad = [v for v in values if v < minimum]
    if bad:
        raise UserError(f"{flag}: every value must be >= {minimum}, got {bad[0]} in '{text}'")
    return values


@dataclass(frozen=True)
class Run:
    """One invocation, checked: the typed configs, the command's own files and devices, and the flag snapshot.

    ``model.table_sizes`` are the flags' (for a data set, :func:`prepare` puts
    the data's in their place); ``notes`` are the log lines of upstream flags
    accepted as no-ops; ``flags`` is what checkpoints and results keep of the
    command line (``args``), with the values the checks resolved.
    """

    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    inference_only: bool = False
    load_model: str = ""
    save_collapsed: str = ""
    results_json: str = ""
    use_gpu: bool = False
    tf32: bool = False
    dist_backend: str | None = None
    dist_timeout: int = process_group.DEFAULT_TIMEOUT_S
    reporting: Reporting = field(default_factory=Reporting)
    notes: tuple[str, ...] = ()
    flags: dict | None = None
    mixed_dimension: MixedDimensionConfig | None = None
    quantize_bits: tuple[int, ...] = ()


def model_config(args: argparse.Namespace) -> ModelConfig:
    """The architecture the flags describe (the tables of ``--arch-embedding-size``, or its default); checked."""
    d = args.arch_sparse_feature_size
    if d < 1:
        raise UserError(f"--arch-sparse-feature-size: must be >= 1, got {d}")
    table_sizes = parse_dashed(
        "--arch-embedding-size",
        DEFAULT_EMBEDDING_SIZE if args.arch_embedding_size is None else args.arch_embedding_size,
    )
    bottom_mlp = parse_dashed("--arch-mlp-bot", args.arch_mlp_bot)
    top_mlp = parse_dashed("--arch-mlp-top", args.arch_mlp_top)
    reduction.check_reduction_flags(args, d, bottom_mlp)
    if len(bottom_mlp) < 2 or bottom_mlp[-1] != d:
        raise UserError(
            f"--arch-mlp-bot: must have at least two widths and end in d={d} (--arch-sparse-feature-size), "
            f"got '{args.arch_mlp_bot}'"
        )
    if top_mlp[-1] != 1:
        raise UserError(f"--arch-mlp-top: must end in 1 (one click logit), got '{args.arch_mlp_top}'")
    if args.mlet_hidden < 0:
        raise UserError(f"--mlet-hidden: must be >= 0 (0 for plain tables), got {args.mlet_hidden}")
    if 0 < args.mlet_hidden < d:
        raise UserError(
            f"--mlet-hidden: K={args.mlet_hidden} is smaller than d={d}; "
            "MLET's inner width must be >= --arch-sparse-feature-size"
        )
    try:
        parse_projection_init(args.mlet_init)
    except ValueError as error:
        raise UserError(f"--mlet-init: {error}") from None
    config = ModelConfig(
        table_sizes=tuple(table_sizes),
        dim=d,
        bottom_mlp=tuple(bottom_mlp),
        top_mlp=tuple(top_mlp),
        mlet_hidden=args.mlet_hidden,
        mlet_init=args.mlet_init,
        interaction=args.arch_interaction_op,
        interaction_itself=args.arch_interaction_itself,
    )
    return reduction.with_qr(config, args)


def check_counts(args: argparse.Namespace) -> None:
    """The flags that count things: bounds, rates, seeds."""
    require_at_least(
        [
            ("--mini-batch-size", args.mini_batch_size, 1),
            ("--nepochs", args.nepochs, 1),
            ("--num-indices-per-lookup", args.num_indices_per_lookup, 1),
            ("--data-size", args.data_size, 1),
            ("--num-batches", args.num_batches, 0),
            ("--print-freq", args.print_freq, 0),
            ("--print-precision", args.print_precision, 1),
            ("--save-freq", args.save_freq, 0),
            ("--num-workers", args.num_workers, -1),
            ("--test-num-workers", args.test_num_workers, -1),
            ("--lr-num-warmup-steps", args.lr_num_warmup_steps, 0),
            ("--lr-decay-start-step", args.lr_decay_start_step, 0),
            ("--lr-num-decay-steps", args.lr_num_decay_steps, 0),
            ("--dist-timeout", args.dist_timeout, 1),
        ]
    )
    if not (args.learning_rate > 0 and math.isfinite(args.learning_rate)):
        raise UserError(f"--learning-rate: must be a positive number, got {args.learning_rate}")
    check_seed("--numpy-rand-seed", args.numpy_rand_seed)
    if args.test_mini_batch_size == 0 or args.test_mini_batch_size < -1:
        raise UserError(
            f"--test-mini-batch-size: must be >= 1 (or -1: --mini-batch-size), got {args.test_mini_batch_size}"
        )
    if args.test_data_size is not None and args.test_data_size < 1:
        raise UserError(f"--test-data-size: must be >= 1, got {args.test_data_size}")
    if not 0.0 <= args.loss_threshold < 0.5:
        raise UserError(f"--loss-threshold: must be in [0, 0.5) (0: off), got {args.loss_threshold}")
    if args.lr_num_decay_steps and args.lr_decay_start_step < args.lr_num_warmup_steps:
        raise UserError("--lr-decay-start-step: must not come before the end of warm-up (--lr-num-warmup-steps)")


def resolve_optimizer(args: argparse.Namespace) -> str:
    """``--optimizer``, or the MLET fork's ``--optim`` naming it; given both, they must agree."""
    if args.optimizer is not None and args.optim is not None and args.optimizer != args.optim:
        raise UserError(
            f"--optim: the MLET fork's name of --optimizer, given as {args.optim} beside --optimizer={args.optimizer};"
            " give one of the two"
        )
    return args.optimizer or args.optim or DEFAULT_OPTIMIZER


def ignored_flag_notes(args: argparse.Namespace, defaults: argparse.Namespace) -> list[str]:
    """One log line for each flag given where it changes nothing: MLET's ``--mlet-init`` without MLET,
    ``--profile-prefix`` without profiling, the GPU's ``--tf32`` on a CPU, and ``--data-on-device=on`` on a CPU (no
    device memory beside the host's)."""
    lines = []
    if args.mlet_init != defaults.mlet_init and not args.mlet_hidden:
        lines.append("--mlet-init: ignored without --mlet-hidden (it initialises MLET's projection)")
    if args.profile_prefix and not args.enable_profiling:
        lines.append("--profile-prefix: ignored without --enable-profiling (it names the profiler's files)")
    if args.tf32 and not args.use_gpu:
        lines.append("--tf32: ignored without --use-gpu (TF32 is a GPU's matrix format)")
    if args.data_on_device == "on" and not args.use_gpu:
        lines.append(
            "--data-on-device=on: without --use-gpu the data stays in host memory (batches are cut from it as on a GPU)"
        )
    return lines


def replaced_checkpoint_notes(args: argparse.Namespace) -> list[str]:
    """A log line where ``--save-model`` names a file that exists and no ``--load-model`` continues it.

    Rerunning a stopped command as it was (upstream's habit) starts over and writes over the checkpoint the stopped
    run left, hours of training perhaps; the line says so while that can still be undone, and how to continue it."""
    if not args.save_model or args.load_model or not Path(args.save_model).is_file():
        return []
    return [
        f"--save-model {args.save_model}: exists; this run starts over and replaces it at its first save "
        f"(to continue the run saved there instead, add --load-model={args.save_model})"
    ]


def train_config(args: argparse.Namespace) -> TrainConfig:
    """How to train, log and checkpoint (``--optim`` and ``--embedding-update=auto`` resolved); checked."""
    loss_weights = parse_loss_weights(args.loss_weights)
    optimizer = resolve_optimizer(args)
    if args.embedding_update == "fused" and optimizer not in FUSED_OPTIMIZERS:
        raise UserError(
            f"--embedding-update=fused: supports --optimizer {' or '.join(FUSED_OPTIMIZERS)}, not {optimizer}"
        )
    if args.embedding_update == "autograd" and optimizer not in TORCH_OPTIMIZERS:
        raise UserError(
            f"--embedding-update=autograd: --optimizer {optimizer} runs only with the fused table update"
            " (--embedding-update=fused or auto)"
        )
    embedding_update = args.embedding_update
    if embedding_update == "auto":
        embedding_update = "fused" if optimizer in FUSED_OPTIMIZERS else "autograd"
    if args.compile != "none" and not (args.use_gpu and args.cuda_graph and embedding_update == "fused"):
        raise UserError(
            f"--compile={args.compile}: compiles the CUDA-graph training step, which needs --use-gpu, --cuda-graph"
            " and the fused embedding update"
        )
    return TrainConfig(
        optimizer=optimizer,
        learning_rate=args.learning_rate,
        embedding_update=embedding_update,
        loss_function=args.loss_function,
        loss_weights=loss_weights,
        loss_threshold=args.loss_threshold,
        lr_num_warmup_steps=args.lr_num_warmup_steps,
        lr_decay_start_step=args.lr_decay_start_step,
        lr_num_decay_steps=args.lr_num_decay_steps,
        nepochs=args.nepochs,
        num_batches=args.num_batches,
        seed=args.numpy_rand_seed,
        cuda_graph=args.cuda_graph,
        bf16=args.bf16,
        compile=args.compile,
        adapt_threads=args.adapt_threads,
        num_workers=args.num_workers,
        test_freq=args.test_freq,
        test_num_workers=args.test_num_workers,
        target_auc=args.mlperf_auc_threshold,
        target_accuracy=args.mlperf_acc_threshold,
        print_freq=args.print_freq,
        print_time=args.print_time,
        print_wall_time=args.print_wall_time,
        print_precision=args.print_precision,
        progress=args.progress,
        save_model=args.save_model,
        save_freq=args.save_freq,
        save_best=args.save_best,
    )


GAUSSIAN_ID_FLAGS = ("--rand-data-min", "--rand-data-max", "--rand-data-mu", "--rand-data-sigma")
"""Upstream's settings of gaussian random ids (``--rand-data-dist=gaussian``)."""


def random_config(args: argparse.Namespace) -> RandomConfig:
    """How random data draws ids and labels (upstream's ``--rand-data-*``, ``--round-targets``); the gaussian
    settings checked where they draw ids (elsewhere :func:`random_id_notes` logs them as ignored, as upstream
    accepts them)."""
    if args.data_generation == "random" and args.rand_data_dist == "gaussian":
        check_gaussian_settings(args)
    return RandomConfig(
        distribution=args.rand_data_dist,
        low=args.rand_data_min,
        high=args.rand_data_max,
        mu=args.rand_data_mu,
        sigma=args.rand_data_sigma,
        round_targets=args.round_targets,
    )


def check_gaussian_settings(args: argparse.Namespace) -> None:
    """Gaussian ids need finite settings, a positive sigma and ``--rand-data-max >= --rand-data-min``."""
    for flag in GAUSSIAN_ID_FLAGS:
        value = flag_value(args, flag)
        if not math.isfinite(value):
            raise UserError(f"{flag}: must be a finite number, got {value}")
    if args.rand_data_sigma <= 0:
        raise UserError(f"--rand-data-sigma: must be > 0, got {args.rand_data_sigma}")
    if args.rand_data_max < args.rand_data_min:
        raise UserError(
            f"--rand-data-max: must be >= --rand-data-min ({args.rand_data_min:g}), got {args.rand_data_max:g}"
        )


def random_id_notes(args: argparse.Namespace, defaults: argparse.Namespace) -> list[str]:
    """One log line for each ``--rand-data-*`` setting that draws nothing: without random data, or a gaussian
    setting with uniform ids (upstream ignores them silently)."""
    given = [
        flag
        for flag in ("--rand-data-dist", *GAUSSIAN_ID_FLAGS)
        if flag_value(args, flag) != flag_value(defaults, flag)
    ]
    if args.data_generation != "random":
        return [f"{flag}: ignored: only --data-generation=random draws ids" for flag in given]
    if args.rand_data_dist != "gaussian":
        return [f"{flag}: ignored without --rand-data-dist=gaussian" for flag in given]
    return []


GENERATED_ONLY = {
    "--data-size": ("random", "synthetic"),
    "--num-indices-per-lookup": ("random",),
    "--num-indices-per-lookup-fixed": ("random",),
}
"""Flags of generated data and the ``--data-generation`` kinds that read them (a data set's files decide its size)."""


def generated_data_notes(args: argparse.Namespace, defaults: argparse.Namespace) -> list[str]:
    """One log line for each flag of generated data given where nothing reads it: :data:`GENERATED_ONLY`'s, and
    the click model's ``--synthetic-*`` beside other data (upstream ignores its own ones silently)."""
    kinds = {
        **GENERATED_ONLY,
        **{flag_name(dest): ("synthetic",) for dest in vars(args) if dest.startswith("synthetic_")},
    }
    return [
        f"{flag}: ignored: only --data-generation={' or '.join(readers)} reads it"
        for flag, readers in kinds.items()
        if args.data_generation not in readers and flag_value(args, flag) != flag_value(defaults, flag)
    ]


def data_config(args: argparse.Namespace, model: ModelConfig, dataset: DatasetConfig | None) -> DataConfig:
    """Where batches come from: generated data of ``model``'s tables, or ``dataset`` (its sizes checked
    against an explicit ``--arch-embedding-size``, and its dense width against ``--arch-mlp-bot``)."""
    if dataset is not None and model.bottom_mlp[0] != DENSE_INPUTS[dataset.data_set]:
        why = (
            "the 13 counts I1-I13"
            if dataset.data_set == "kaggle"
            else "one constant input, as Avazu has no dense features"
        )
        raise UserError(
            f"--arch-mlp-bot: must start with {DENSE_INPUTS[dataset.data_set]} for {dataset.data_set} ({why}), "
            f"got '{args.arch_mlp_bot}'"
        )
    explicit_sizes = dataset is None or args.arch_embedding_size is not None
    if dataset is not None and explicit_sizes:
        check_given_table_sizes(model.table_sizes, dataset)
    return DataConfig(
        generation=args.data_generation,
        table_sizes=model.table_sizes if explicit_sizes else None,
        dense_features=model.bottom_mlp[0],
        batch_size=args.mini_batch_size,
        test_batch_size=args.test_mini_batch_size if args.test_mini_batch_size > 0 else args.mini_batch_size,
        train_samples=args.num_batches * args.mini_batch_size if args.num_batches > 0 else args.data_size,
        test_samples=args.test_data_size,
        indices_per_lookup=args.num_indices_per_lookup,
        indices_per_lookup_fixed=args.num_indices_per_lookup_fixed,
        seed=args.numpy_rand_seed,
        eval_split=args.eval_split,
        synthetic=SyntheticConfig(**{field: flag_value(args, flag) for flag, field in MODEL_FLAGS.items()}),
        random=random_config(args),
        dataset=dataset,
        progress=args.progress,
        placement=args.data_on_device,
    )


def check_run_files(args: argparse.Namespace) -> None:
    """What the run reads and how it runs: the checkpoint to load, the combination of output flags, the device."""
    if args.inference_only and not args.load_model:
        raise UserError("--inference-only: needs --load-model (the checkpoint to evaluate)")
    if args.load_model:
        try:
            check_file(args.load_model)
        except UserError as error:
            raise UserError(f"--load-model {error}") from None
    if args.save_freq and not args.save_model:
        raise UserError("--save-freq: needs --save-model (the checkpoint to write)")
    if args.inference_only and args.save_collapsed:
        raise UserError(
            "--save-collapsed: not with --inference-only; "
            "collapse a saved checkpoint with: python checkpoint.py collapse IN OUT"
        )
    for flag, path in (("--save-model", args.save_model), ("--save-best", args.save_best)):
        if args.inference_only and path:
            raise UserError(
                f"{flag}: not with --inference-only (nothing is trained); "
                "collapse a checkpoint with: python checkpoint.py collapse IN OUT"
            )
    if args.use_gpu and not torch.cuda.is_available():
        raise UserError("--use-gpu: no CUDA device is available")
    process_group.check_backend(args.dist_backend, args.use_gpu)


def validate_outputs(args: argparse.Namespace, reporting: Reporting) -> None:
    """The files and folders the run writes: distinct, none of them (but ``--save-model``) the loaded checkpoint,
    and writable now rather than after training (checked by the writing process)."""
    outputs = {
        "--save-model": args.save_model,
        "--save-best": args.save_best,
        "--save-collapsed": args.save_collapsed,
        "--results-json": args.results_json,
    }
    written = {**outputs, **reporting_files(reporting)}
    check_distinct_outputs(written)
    if args.load_model:  # every output but --save-model, which a resumed run writes over the file it loaded
        replaced = {flag: path for flag, path in written.items() if flag != "--save-model"}
        check_distinct_outputs({"--load-model": args.load_model, **replaced})
    if is_main_process():
        for flag, path in outputs.items():
            if path:
                check_output_file(flag, path)
        check_reporting_files(reporting)


def evaluated_data(flags: dict) -> dict[str, object]:
    """``{flag: value}`` of the recorded ``flags`` that decide what ``--inference-only`` scores.

    On a data set: which rows its test and validation splits hold, and which table row each id reads (the
    vocabulary is numbered by the training split's counts, then limited by ``--cat-min-count`` and
    ``--max-ind-range``); ``--data-split-seed`` counts only where it seeds something (the settings the processed
    data depend on). On synthetic data: the click model (its ``--synthetic-*`` flags and ``--numpy-rand-seed``).
    Random data is scored on whatever it draws (upstream times inference on it with any seed)."""
    generation = flags.get("data_generation")
    if generation == "synthetic":
        model = {flag_name(dest): value for dest, value in sorted(flags.items()) if dest.startswith("synthetic_")}
        return {"--data-generation": generation, **model, "--numpy-rand-seed": flags.get("numpy_rand_seed")}
    if generation != "dataset" or "data_split" not in flags:
        return {"--data-generation": generation}
    settings = cache_settings(
        flags["data_set"], flags["data_split"], flags["data_split_seed"], flags.get("data_sub_sample_rate", 0.0)
    )
    return {
        "--data-generation": "dataset",
        "--data-set": settings["data_set"],
        "--data-split": settings["data_split"],
        "--data-sub-sample-rate": settings.get("sub_sample_rate", 0.0),
        **{flag_name(dest): flags[dest] for dest in ("cat_min_count", "max_ind_range")},
        "--data-split-seed": settings["split_seed"],  # last: the flags above say why it seeds or not
    }


EVALUATED_DATA_REASON = {
    "dataset": "score other rows, or read other table rows for their ids (ids are numbered by the training split's"
    " vocabulary)",
    "synthetic": "score samples of another click model than the one it learned",
}
"""Why ``--inference-only`` refuses a flag of :func:`evaluated_data` that differs, by ``--data-generation``."""


def check_evaluated_data(ckpt: dict, flags: dict) -> None:
    """For ``--inference-only``: refuse, before any data is prepared, a flag of :func:`evaluated_data` that
    differs from the checkpoint's recorded one, as an architecture that differs is refused; a checkpoint that
    records no flags is not compared."""
    saved = ckpt.get("args") or {}
    if "data_generation" not in saved:
        return
    recorded, given = evaluated_data(saved), evaluated_data(flags)
    reason = EVALUATED_DATA_REASON.get(saved["data_generation"], "score other data than it was trained on")
    for flag, old in recorded.items():
        if flag in given and given[flag] != old:
            raise UserError(
                f"{flag}: checkpoint was trained with {old}, the flags give {given[flag]}; evaluating it would"
                f" {reason}: give the checkpoint's value"
            )


def parse_loss_weights(text: str) -> tuple[float, float]:
    """``--loss-weights`` ``"w0-w1"`` (weights of negatives and positives for wbce)."""
    parts = text.split("-")
    try:
        w0, w1 = (float(v) for v in parts)
    except ValueError:
        raise UserError(f"--loss-weights: expected two dash-separated numbers like 1.0-3.0, got '{text}'") from None
    if w0 < 0 or w1 < 0:
        raise UserError(f"--loss-weights: weights must be >= 0, got '{text}'")
    return w0, w1


def flags_snapshot(args: argparse.Namespace, run: Run) -> dict:
    """The flags as checkpoints and results keep them: every flag's value (those the checks resolve, resolved)
    and the architecture in list form (``table_sizes``, ``bottom_mlp``, ``top_mlp``, ``loss_weights_pair``)."""
    flags = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))}
    flags["optimizer"] = run.train.optimizer
    del flags["optim"]
    flags["embedding_update"] = run.train.embedding_update
    flags["max_ind_range"] = run.data.dataset.max_ind_range if run.data.dataset is not None else 0
    if run.data.dataset is not None:
        flags["data_split"] = run.data.dataset.split
    flags["table_sizes"] = list(run.model.table_sizes)
    flags["bottom_mlp"] = list(run.model.bottom_mlp)
    flags["top_mlp"] = list(run.model.top_mlp)
    flags["loss_weights_pair"] = list(run.train.loss_weights)
    return flags


PATH_FLAGS = frozenset(
    {
        "raw_data_file",
        "processed_data_file",
        "load_model",
        "save_model",
        "save_best",
        "save_collapsed",
        "results_json",
        "tensor_board_filename",
        "profile_prefix",
    }
)
"""Files each host may name its own way (the same data or checkpoint at another path; what rank 0 alone writes):
the processes of a run must agree on whether each is given, not on its path."""
LOCAL_FLAGS = frozenset({"num_workers", "test_num_workers", "progress", "adapt_threads", "local_rank"})
"""A process's own threads, progress bars and upstream's --local_rank (which ``torch.distributed.launch`` gives
each process its own)."""
DERIVED_FLAGS = frozenset({"table_sizes", "bottom_mlp", "top_mlp", "loss_weights_pair"})
"""Entries of the flag snapshot made from other flags (not flags of their own)."""


def flag_differences(first: dict, mine: dict) -> str | None:
    """How this process's flag snapshot ``mine`` differs from rank 0's ``first`` (up to three flags, in one line),
    or ``None``: under torchrun every process must be given the same flags (but :data:`LOCAL_FLAGS`, and the paths
    of :data:`PATH_FLAGS`), or they train different models or stop in a mismatched collective."""

    def shared(flags: dict) -> dict:
        return {
            k: ("given" if v else "not given") if k in PATH_FLAGS else v
            for k, v in flags.items()
            if k not in LOCAL_FLAGS | DERIVED_FLAGS
        }

    theirs, ours = shared(first), shared(mine)
    differ = sorted(key for key in theirs.keys() | ours.keys() if theirs.get(key) != ours.get(key))
    if not differ:
        return None
    listed = ", ".join(
        f"{flag_name(key)}{' ' if key in PATH_FLAGS else '='}{ours.get(key)} (rank 0: {theirs.get(key)})"
        for key in differ[:3]
    )
    more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
    return f"started with other flags than rank 0: {listed}{more}; give every process the same flags"


def validate(args: argparse.Namespace) -> Run:
    """Check the flags and build the run's configs; a :class:`UserError` names the first bad flag."""
    notes = check_foreign_flags(args)  # first: the fork's MLET flags explain a --arch-sparse-feature-size
    defaults = build_parser().parse_args([])
    notes += reduction.unused_reduction_flags(args, defaults) + ignored_flag_notes(args, defaults)
    notes += random_id_notes(args, defaults) + generated_data_notes(args, defaults) + replaced_checkpoint_notes(args)
    model = model_config(args)
    check_counts(args)
    train = train_config(args)
    reporting = reporting_config(args)
    check_run_files(args)
    dataset = dataset_config(args) if args.data_generation == "dataset" else None
    data = data_config(args, model, dataset)
    check_model_flags({field: flag_value(args, flag) for flag, field in MODEL_FLAGS.items()})
    quantize_bits = reduction.parse_quantize_bits(args.quantize_emb_with_bit, args.inference_only)
    reduction.check_quantize_run(quantize_bits, args.use_gpu, args.inference_only)
    validate_outputs(args, reporting)
    run = Run(
        model=model,
        data=data,
        train=train,
        inference_only=args.inference_only,
        load_model=args.load_model,
        save_collapsed=args.save_collapsed,
        results_json=args.results_json,
        use_gpu=args.use_gpu,
        tf32=args.tf32,
        dist_backend=args.dist_backend,
        dist_timeout=args.dist_timeout,
        mixed_dimension=reduction.mixed_dimension_config(args),
        quantize_bits=quantize_bits,
        reporting=reporting,
        notes=tuple(notes),
    )
    return replace(run, flags=flags_snapshot(args, run))


def run_config(argv: Sequence[str]) -> Run:
    """The checked :class:`Run` of a command line (for code that starts runs the way ``dlrm_mlet.py`` does)."""
    return validate(build_parser().parse_args(argv))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check ``argv``; a bad flag raises :class:`UserError` (or exits, for argparse's own checks)."""
    args = build_parser().parse_args(argv)
    validate(args)
    return args
