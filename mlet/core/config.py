"""Typed configurations of a run: the model, the data, the training.

``dlrm_mlet.py`` builds and checks them once from the flags (naming the flag
when one is wrong); below the command line nothing reads the flags again.
:class:`ModelConfig` is stored in checkpoints (``to_dict``/``from_dict``);
the flags themselves are kept beside it as a snapshot, so that a resumed run
can name the flags that changed.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, fields, replace

COMPILE_MODES = ("none", "default", "max-autotune")
"""``--compile``: no compilation, or torch.compile's mode (``max-autotune`` without its own CUDA graphs: the
step is one CUDA graph already)."""
INTERACTIONS = ("dot", "cat")
OPTIMIZERS = ("sgd", "adagrad", "adam", "rwsadagrad")
FUSED_OPTIMIZERS = ("sgd", "adagrad", "rwsadagrad")  # the table update inside the backward
TORCH_OPTIMIZERS = ("sgd", "adagrad", "adam")  # sparse gradients and torch's optimizers (--embedding-update=autograd)
LOSSES = ("bce", "mse", "wbce")
DATA_GENERATIONS = ("random", "synthetic", "dataset")
DATA_SETS = ("kaggle", "terabyte", "avazu")
EVAL_SPLITS = ("test", "val")
QR_OPERATIONS = ("mult", "add", "concat")
RANDOM_ID_DISTRIBUTIONS = ("uniform", "gaussian")


@dataclass(frozen=True)
class TableConfig:
    """One feature's embedding table as built (TorchRec-style per-table config; see ``ModelConfig.table_configs``).

    ``width`` is the width of the stored rows: ``dim`` for a plain table, the
    mixed-dimension width ``d_t`` (projected to ``dim`` when smaller), or for
    quotient-remainder ``dim`` (``mult``/``add``) or ``dim / 2`` per half
    (``concat``). ``hidden`` is MLET's inner width (0: the rows are stored
    directly). ``collisions`` > 0 makes it a quotient-remainder pair: a
    quotient table of ``ceil(rows / collisions)`` rows and a remainder table
    of ``collisions`` rows, combined by ``operation``.
    """

    rows: int
    dim: int
    width: int
    hidden: int = 0
    collisions: int = 0
    operation: str = ""

    @property
    def kind(self) -> str:
        """``qr`` (quotient-remainder), ``md`` (mixed dimension: a width below ``dim``, projected) or ``plain``."""
        if self.collisions:
            return "qr"
        return "md" if self.width < self.dim else "plain"

    @property
    def parts(self) -> tuple[int, ...]:
        """Rows of each stored table: ``(n,)``, or ``(ceil(n / c), c)`` for a quotient-remainder pair."""
        if self.collisions:
            return (math.ceil(self.rows / self.collisions), self.collisions)
        return (self.rows,)

    @property
    def projected(self) -> bool:
        """True when a bias-free ``width x dim`` projection follows the lookup (mixed dimensions)."""
        return self.kind == "md"

    def parameter_counts(self) -> tuple[int, int]:
        """``(training, inference)`` values of this table: MLET parts hold ``n x K + K x w`` while training and
        ``n x w`` after collapse; a mixed-dimension projection adds ``w x d`` to both."""
        projection = self.width * self.dim if self.projected else 0
        inference = sum(n * self.width for n in self.parts) + projection
        if not self.hidden:
            return inference, inference
        return sum(n * self.hidden + self.hidden * self.width for n in self.parts) + projection, inference


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a DLRM (stored in checkpoints).

    ``bottom_mlp`` includes the dense input width (e.g. ``[13, 512, 256, 64, 16]``);
    ``top_mlp`` excludes the interaction width, which is derived (e.g. ``[512, 256, 1]``).
    """

    table_sizes: tuple[int, ...]
    dim: int
    bottom_mlp: tuple[int, ...]
    top_mlp: tuple[int, ...]
    mlet_hidden: int = 0
    mlet_init: str = "normal"
    interaction: str = "dot"
    interaction_itself: bool = False
    qr_flag: bool = False
    qr_threshold: int = 200
    qr_collisions: int = 4
    qr_operation: str = "mult"
    md_dims: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Inverse of :meth:`to_dict` (fields missing from older checkpoints take their defaults)."""
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        for k in ("table_sizes", "bottom_mlp", "top_mlp", "md_dims"):
            if k in kw:
                kw[k] = tuple(int(v) for v in kw[k])
        return cls(**kw)

    @property
    def is_composite(self) -> bool:
        """True when some table is quotient-remainder or mixed-dimension (not one fused ``n x d`` or MLET weight)."""
        return any(t.kind != "plain" for t in self.table_configs())

    def table_configs(self) -> tuple[TableConfig, ...]:
        """Each feature's table: quotient-remainder where ``qr_flag`` and it has more rows than ``qr_threshold``
        (upstream's precedence), else mixed-dimension at ``md_dims[t]`` when given, else plain ``d``; MLET
        (``mlet_hidden``) applies to every stored table, with an inner width scaled like the mixed-dimension
        width (:meth:`inner_width`)."""
        tables = []
        for t, n in enumerate(self.table_sizes):
            if self.qr_flag and n > self.qr_threshold:
                width = self.dim // 2 if self.qr_operation == "concat" else self.dim
                tables.append(
                    TableConfig(n, self.dim, width, self.inner_width(self.dim), self.qr_collisions, self.qr_operation)
                )
            else:
                width = self.md_dims[t] if self.md_dims else self.dim
                tables.append(TableConfig(n, self.dim, width, self.inner_width(width)))
        return tuple(tables)

    def inner_width(self, width: int) -> int:
        """MLET's inner width for stored rows of ``width``: ``K`` at ``width == d``, else ``K * width / d``
        rounded (at least ``width``); 0 without MLET."""
        if not self.mlet_hidden:
            return 0
        return self.mlet_hidden if width >= self.dim else max(width, round(self.mlet_hidden * width / self.dim))

    @property
    def table_width(self) -> int:
        """Width of the trained table weight: ``K`` for MLET (``W1`` is ``n x K``), else ``d``."""
        return self.mlet_hidden or self.dim

    def collapsed(self) -> ModelConfig:
        """The config of the same model with MLET tables folded to plain ones."""
        return replace(self, mlet_hidden=0)

    def parameter_counts(self) -> dict[str, int]:
        """Parameter counts: ``mlp``, ``embedding_training`` (as trained: ``n x K + K x d``
        per MLET table), ``embedding_inference`` (collapsed: ``n x d``; quotient-remainder and
        mixed-dimension tables count their own shapes, see ``TableConfig.parameter_counts``), and the
        ``training`` and ``inference`` totals."""
        top = (self.interaction_width(), *self.top_mlp)
        mlp = sum(
            n_in * n_out + n_out for widths in (self.bottom_mlp, top) for n_in, n_out in itertools.pairwise(widths)
        )
        counts = [t.parameter_counts() for t in self.table_configs()]
        training, inference = sum(c[0] for c in counts), sum(c[1] for c in counts)
        return {
            "mlp": mlp,
            "embedding_training": training,
            "embedding_inference": inference,
            "training": mlp + training,
            "inference": mlp + inference,
        }

    def interaction_width(self) -> int:
        """Input width of the top MLP."""
        num_features = len(self.table_sizes) + 1
        if self.interaction == "cat":
            return self.dim * num_features
        pairs = (
            num_features * (num_features + 1) // 2
            if self.interaction_itself
            else num_features * (num_features - 1) // 2
        )
        return self.dim + pairs


@dataclass(frozen=True)
class MixedDimensionConfig:
    """``--md-*``: how mixed-dimension widths are chosen (``mlet.model.mixed_dimension``); the widths themselves,
    which need the data's popularity, go to ``ModelConfig.md_dims``."""

    temperature: float = 0.3
    threshold: int = 200
    round_dims: bool = False


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic click model (``--synthetic-*``; see :mod:`mlet.data.synthetic`)."""

    rank: int = 16
    zipf_exponent: float = 1.05
    interaction_std: float = 3.0
    bias_std: float = 0.8
    dense_std: float = 0.5
    noise_std: float = 0.0
    positive_rate: float = 0.25


@dataclass(frozen=True)
class RandomConfig:
    """Upstream's random data (``--data-generation=random``; see :class:`mlet.data.synthetic.RandomBatches`).

    ``distribution`` of the ids: ``uniform`` over each table, or ``gaussian``: N(``mu``, ``sigma``) (``mu``
    -1: the middle of [``low``, ``high``]) clipped to [``low``, ``high``] and to the table, then truncated to an
    integer (upstream's ``--rand-data-*``). ``round_targets``: labels 0 or 1; otherwise each label is a uniform
    draw in [0, 1), upstream's soft labels.
    """

    distribution: str = "uniform"
    low: float = 0.0
    high: float = 1.0
    mu: float = -1.0
    sigma: float = 1.0
    round_targets: bool = False


@dataclass(frozen=True)
class DatasetConfig:
    """A real data set (``--data-generation=dataset``): which file, which split, which vocabulary."""

    data_set: str = "kaggle"
    raw_data_file: str = ""
    processed_data_file: str = ""
    split: str = "dlrm"
    split_seed: int = 0
    cat_min_count: int = 1
    max_ind_range: int = 0
    skip_bad_rows: bool = False
    sub_sample_rate: float = 0.0
    randomize: str = "total"


@dataclass(frozen=True)
class DataConfig:
    """Where batches come from and how large they are.

    ``table_sizes``: the tables of generated data; for a data set the sizes
    the flags ask for (checked against the data's), or ``None`` to take the
    data's. ``train_samples``/``test_samples`` size generated data
    (``test_samples`` ``None``: a quarter of train, at most 2**18); for a data
    set ``test_samples`` caps the evaluated rows. ``eval_split``: the split
    the reported metrics come from.
    """

    generation: str = "random"
    table_sizes: tuple[int, ...] | None = (4, 3, 2)
    dense_features: int = 4
    batch_size: int = 1
    test_batch_size: int = 1
    train_samples: int = 1
    test_samples: int | None = None
    indices_per_lookup: int = 10
    indices_per_lookup_fixed: bool = False
    seed: int = 123
    eval_split: str = "test"
    synthetic: SyntheticConfig = SyntheticConfig()
    random: RandomConfig = RandomConfig()
    dataset: DatasetConfig | None = None
    progress: bool = True
    placement: str = "auto"  # --data-on-device: hold the data in device memory (auto, on, off)


@dataclass(frozen=True)
class TrainConfig:
    """How the model is trained, logged, tested and checkpointed.

    ``embedding_update`` is resolved (``fused`` or ``autograd``, never ``auto``);
    ``num_batches`` caps the batches of an epoch (0: all); ``num_workers`` -1
    means the device's default (see ``mlet.training.trainer.batch_workers``),
    ``test_num_workers`` -1 the same as ``num_workers``. ``loss_threshold`` t
    in (0, 0.5) clamps predicted probabilities to [t, 1 - t] in the loss
    (upstream's ``--loss-threshold``). ``target_auc``/``target_accuracy`` > 0
    stop training at the first test that reaches them.
    """

    optimizer: str = "sgd"
    learning_rate: float = 0.01
    embedding_update: str = "fused"
    loss_function: str = "bce"
    loss_weights: tuple[float, float] = (1.0, 1.0)
    loss_threshold: float = 0.0
    lr_num_warmup_steps: int = 0
    lr_decay_start_step: int = 0
    lr_num_decay_steps: int = 0
    nepochs: int = 1
    num_batches: int = 0
    seed: int = 123
    cuda_graph: bool = True
    bf16: bool = False  # MLPs and interaction in bfloat16 (mlet/training/precision.py)
    compile: str = "none"  # torch.compile of the graphed step's MLPs and dense update (COMPILE_MODES)
    adapt_threads: bool = True  # on a CPU, fewer threads while other processes use the cores (cpu_threads.py)
    num_workers: int = -1
    # testing, logging and checkpoints
    test_freq: int = -1
    test_num_workers: int = -1
    target_auc: float = 0.0
    target_accuracy: float = 0.0
    print_freq: int = 0
    print_time: bool = False
    print_wall_time: bool = False
    print_precision: int = 5
    progress: bool = True
    save_model: str = ""
    save_freq: int = 0
    save_best: str = ""  # also checkpoint the model here at each test that improves the best AUC
