"""Which flags a checkpoint accepts: architecture mismatches, and flag changes on resume.

``dlrm_mlet.py`` checks a ``--load-model`` checkpoint against the flags before
anything is loaded: an architecture flag that disagrees with the checkpoint
is one clear line naming it; on resume, flags that define the saved state
(the optimizer, the training-data stream) must match, and every other change
is allowed and logged.
"""

from __future__ import annotations

from dataclasses import replace

from dlrm_model import ModelConfig
from mlet.core.errors import UserError
from mlet.training.checkpoints import INFERENCE, dashed, flag_name, trained_hidden

ARCHITECTURE_FLAGS = [
    ("table_sizes", "--arch-embedding-size", dashed),
    ("dim", "--arch-sparse-feature-size", str),
    ("mlet_hidden", "--mlet-hidden", str),
    ("bottom_mlp", "--arch-mlp-bot", dashed),
    ("top_mlp", "--arch-mlp-top", dashed),
    ("interaction", "--arch-interaction-op", str),
    ("interaction_itself", "--arch-interaction-itself", str),
]


def describe_mismatch(saved: ModelConfig, wanted: ModelConfig) -> str | None:
    """One line naming the first architecture difference (``None`` if equal)."""
    for name, flag, fmt in ARCHITECTURE_FLAGS:
        a, b = getattr(saved, name), getattr(wanted, name)
        if a != b:
            return f"{flag}: checkpoint has {fmt(a)}, the flags give {fmt(b)}"
    return None


def check_inference_flags(ckpt: dict, wanted: ModelConfig) -> None:
    """Check the flags of ``--inference-only`` against a checkpoint.

    The architecture flags must agree, except that ``--mlet-hidden`` may give
    either the training K (the training command's flags) or 0 (a baseline
    command's flags), for collapsed and two-layer checkpoints alike.
    """
    saved = ModelConfig.from_dict(ckpt["model_config"])
    k = trained_hidden(ckpt)
    if wanted.mlet_hidden not in (0, k):
        raise UserError(f"--mlet-hidden: checkpoint was trained with {k}, the flags give {wanted.mlet_hidden} (give {k} or 0 to evaluate it)")
    mismatch = describe_mismatch(saved, replace(wanted, mlet_hidden=saved.mlet_hidden))
    if mismatch:
        raise UserError(mismatch)


def check_training_flags(ckpt: dict, wanted: ModelConfig) -> None:
    """Check that a checkpoint can start or resume training of the flags' architecture."""
    if ckpt.get("kind") == INFERENCE and wanted.mlet_hidden:
        raise UserError(
            f"--mlet-hidden: checkpoint is an inference checkpoint (plain d-wide tables collapsed from K={trained_hidden(ckpt)}, no optimizer state);"
            " MLET training cannot resume from it: evaluate it with --inference-only, or fine-tune it as a plain model with --mlet-hidden=0"
        )
    mismatch = describe_mismatch(ModelConfig.from_dict(ckpt["model_config"]), wanted)
    if mismatch:
        raise UserError(mismatch)


# Resuming with other flags: architecture flags are checked through the model
# config above; these must match, since the saved state would not mean the same
# thing otherwise; bookkeeping flags are not compared; any other change is
# allowed and logged (the run continues with the new values).
MUST_MATCH_DATA = {"numpy_rand_seed", "mini_batch_size", "data_generation", "num_batches"}
MUST_MATCH_BY_GENERATION = {
    "random": {"data_size", "num_indices_per_lookup", "num_indices_per_lookup_fixed"},
    "synthetic": {"data_size"},
    "dataset": {"data_set", "data_split", "data_split_seed", "cat_min_count", "max_ind_range"},
}
"""Flags that define the training-data stream of each ``--data-generation``; the others do not touch it."""
MUST_MATCH_PREFIXES = {"random": (), "synthetic": ("synthetic_",), "dataset": ()}
BOOKKEEPING = {
    "load_model",
    "save_model",
    "save_freq",
    "save_collapsed",
    "results_json",
    "print_freq",
    "print_time",
    "print_precision",
    "progress",
    "inference_only",
    "dist_backend",  # the process layout: a checkpoint resumes in any world size
    "dist_timeout",
}
ARCHITECTURE_ARGS = {
    "arch_sparse_feature_size",
    "arch_embedding_size",
    "arch_mlp_bot",
    "arch_mlp_top",
    "arch_interaction_op",
    "arch_interaction_itself",
    "mlet_hidden",
    "mlet_init",
}


def resume_flag_changes(saved_args: dict, args: dict, flags: set[str], position: str) -> list[str]:
    """Compare the flags of a resumed run with the checkpoint's.

    ``flags`` are the parser's destinations (derived values are skipped).
    Raises :class:`UserError` naming the first flag that must match but does
    not (``--optimizer`` or a flag defining the training-data stream that the
    saved ``position`` counts in); returns ``--flag=new (checkpoint: old)`` for
    every other changed flag.
    """
    changes = []
    generation = saved_args.get("data_generation")
    must_match = MUST_MATCH_DATA | MUST_MATCH_BY_GENERATION.get(generation, set())
    prefixes = MUST_MATCH_PREFIXES.get(generation, ())
    for dest in sorted(flags & saved_args.keys() & args.keys()):
        old, new = saved_args[dest], args[dest]
        if old == new or dest in BOOKKEEPING or dest in ARCHITECTURE_ARGS:
            continue
        flag = flag_name(dest)
        if dest == "optimizer":
            raise UserError(f"{flag}: checkpoint has {old}, the flags give {new}; the saved optimizer state belongs to {old}")
        if dest in must_match or dest.startswith(prefixes):
            raise UserError(
                f"{flag}: checkpoint has {old}, the flags give {new}; the saved data position ({position}) counts batches of the checkpoint's"
                " training data, so another value would skip or repeat samples (give the checkpoint's value, or start a new run)"
            )
        changes.append(f"{flag}={new} (checkpoint: {old})")
    return changes
