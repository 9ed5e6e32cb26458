"""The data command line: synthetic raw files in the data sets' formats, and preprocessing of raw files.

Real click logs are read by :mod:`mlet.data.preprocessing.raw_data` and cached
by :mod:`mlet.data.preprocessing.cache` (see docs/data.md); training reads the
cache through :mod:`mlet.data.sources`. As a script::

    python data_utils.py generate {kaggle,avazu} --rows N --seed S --out FILE [--scale X]
    python data_utils.py generate terabyte --days N --rows ROWS_PER_DAY --out PREFIX_OR_FOLDER [--scale X]
    python data_utils.py preprocess --data-set=kaggle --raw-data-file=FILE [--processed-data-file=DIR]
"""

from __future__ import annotations

from mlet.core.signals import interrupt_exits  # the standard library only: loaded before the imports it guards

with interrupt_exits("data_utils.py"):  # Ctrl-C while the modules import (torch: seconds): as in the run
    import argparse
    import math
    import sys
    from collections.abc import Sequence

    from mlet.core.config import DATA_SETS
    from mlet.core.errors import (
        OneLineParser,
        UserError,
        add_bool,
        check_output_file,
        check_seed,
        require_at_least,
        run_reporting_errors,
    )
    from mlet.core.signals import exit_status
    from mlet.data.flags import add_dataset_flags, dataset_config
    from mlet.data.preprocessing.cache import prepare_dataset
    from mlet.data.preprocessing.raw_generate import RawGenerator, day_paths, model_defaults
    from mlet.data.synthetic import MODEL_FLAGS, check_model_flags


def command_line_parser() -> argparse.ArgumentParser:
    """``data_utils.py generate ...`` and ``data_utils.py preprocess ...``."""
    parser = OneLineParser(
        prog="data_utils.py", description="Synthetic raw data files, and preprocessing of raw data files."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="write the synthetic click model in a data set's raw format")
    gen.add_argument("data_set", choices=DATA_SETS)
    gen.add_argument("--rows", type=int, required=True, help="data rows to write (terabyte: per day file)")
    gen.add_argument("--seed", type=int, default=0, help="seed of the click model and its draws")
    gen.add_argument(
        "--out",
        type=str,
        required=True,
        help="output file, gzip-compressed if it ends in .gz (terabyte: the day prefix, e.g. input/day writes "
        "input/day_0 ...; input/day.gz writes input/day_0.gz ...; a folder, input or input/, holds day_0 ...)",
    )
    gen.add_argument("--scale", type=float, default=0.01, help="table sizes as a share of the real data set's")
    gen.add_argument("--days", type=int, default=24, help="terabyte: day files to write (24 in the real data set)")
    defaults = model_defaults()
    for flag, name in MODEL_FLAGS.items():
        gen.add_argument(
            flag, type=type(defaults[name]), default=defaults[name], dest=name, help=f"click model: {name}"
        )
    pre = commands.add_parser("preprocess", help="preprocess a raw file into --processed-data-file (as training would)")
    add_dataset_flags(pre)
    add_bool(pre, "--progress", True, "show progress bars (only on a terminal)")
    return parser


def command_line(argv: Sequence[str] | None = None) -> int:
    """Run ``generate`` or ``preprocess``; bad input ends with one line on stderr and exit code 2."""
    args = command_line_parser().parse_args(argv)
    return run_reporting_errors(
        "data_utils.py", lambda: generate_command(args) if args.command == "generate" else preprocess_command(args)
    )


def generate_command(args: argparse.Namespace) -> None:
    """``data_utils.py generate``: write the synthetic click model in a raw format."""
    require_at_least([("--rows", args.rows, 1), ("--days", args.days, 2)])
    check_seed("--seed", args.seed)
    if not (args.scale > 0 and math.isfinite(args.scale)):
        raise UserError(f"--scale: must be a positive number, got {args.scale}")
    model = {name: getattr(args, name) for name in MODEL_FLAGS.values()}
    check_model_flags(model)
    generator = RawGenerator(args.data_set, args.rows, args.seed, args.scale, **model)
    if args.data_set == "terabyte":
        check_output_file("--out", str(day_paths(args.out, 1)[0]))
        paths = generator.write_days(args.out, args.days)
        print(f"wrote {args.days} terabyte day files of {args.rows:,} rows: {paths[0]} ... {paths[-1]}")
        return
    check_output_file("--out", args.out)
    generator.write(args.out)
    print(f"wrote {args.rows:,} {args.data_set} rows to {args.out}")


def preprocess_command(args: argparse.Namespace) -> None:
    """``data_utils.py preprocess``: build (or check) the processed cache of a raw file."""
    dataset = dataset_config(args)
    data = prepare_dataset(dataset, args.progress)
    sizes = data.limits(dataset.cat_min_count, dataset.max_ind_range).table_sizes
    print(f"{data.directory}: rows {data.meta['rows']}; table sizes {'-'.join(map(str, sizes))}")


def cli() -> None:
    """The ``dlrm-mlet-data`` console command (``python data_utils.py``)."""
    sys.exit(exit_status("data_utils.py", command_line))


if __name__ == "__main__":
    cli()
