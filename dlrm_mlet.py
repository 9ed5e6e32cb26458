"""dlrm-mlet: train DLRM with plain or MLET (two-layer) embedding tables.

Upstream DLRM's flags keep their names and meanings (docs/upstream.md: every
upstream and MLET-fork flag, and what it does here); --mlet-hidden K trains
every table as W1 (n x K) @ W2 (K x d); upstream's quotient-remainder (--qr-*),
mixed-dimension (--md-*) and quantization (--quantize-emb-with-bit) flags work
too. Run python dlrm_mlet.py --help.
"""

from __future__ import annotations

import os

from mlet.core.signals import interrupt_exits  # the standard library only: loaded before the imports it guards

STARTED_BY = os.getppid()  # torchrun's agent, read before the imports: it may be killed while they run

with interrupt_exits("dlrm_mlet.py"):  # Ctrl-C while the modules import (torch: seconds): as in the run
    import contextlib
    import re
    import signal
    import sys
    from collections.abc import Sequence
    from dataclasses import replace

    import torch

    from dlrm_model import DLRM
    from mlet.cli import reduction
    from mlet.cli.configs import Run, check_evaluated_data, flag_differences, validate
    from mlet.cli.debug import print_architecture, print_batches, print_parameters
    from mlet.cli.parser import PROG, build_parser
    from mlet.cli.reporting import ONNX_FILE, observers
    from mlet.core.config import ModelConfig, TrainConfig
    from mlet.core.errors import UserError, one_line
    from mlet.core.files import sole_writer
    from mlet.core.launch import launched_rank, log
    from mlet.core.signals import (
        TERMINATED,
        Terminated,
        arrival_times,
        arrived,
        exit_status,
        sighup_raises,
        sigterm_raises,
        stopped,
    )
    from mlet.data.device import place_data
    from mlet.data.sources import DataBundle, build_data
    from mlet.parallel import agent_watch, distributed, endings, process_group, turns
    from mlet.serving import quantize
    from mlet.training import metrics
    from mlet.training.checkpoints import (
        atomic_save,
        collapsed_checkpoint,
        dashed,
        load_checkpoint,
        model_from_checkpoint,
        refuse_quantized,
    )
    from mlet.training.observers import MLPerfLog
    from mlet.training.optimizers import state_bytes
    from mlet.training.processes import Parallel
    from mlet.training.results import parameter_report, write_json
    from mlet.training.state import check_evaluation, check_resume_flags, check_training, data_files_note
    from mlet.training.trainer import Trainer

ACTIVATION_RESERVE = 4 << 30  # bytes kept free for activations, CUDA graphs and the allocator's slack


def describe(trainer: Trainer) -> None:
    """Start-of-run summary of the trainer's data and model (on every process: the table bytes are summed over
    them); an epoch's batches are what it trains (``--num-batches`` may cap it)."""
    model, data, batches_per_epoch = trainer.model, trainer.data, trainer.batches_per_epoch
    report = parameter_report(model, trainer.parallel.all_sum, trainer.trained_config)
    config = model.config
    kind = reduction.describe_tables(config)
    capped = f", {batches_per_epoch} an epoch (--num-batches)" if batches_per_epoch < len(data.train) else ""
    log(
        f"data: {data.description}; train {data.train.num_samples:,} samples ({len(data.train)} batches{capped}), "
        f"{data.eval_split} {data.test.num_samples:,}"
    )
    tables = f"{len(data.table_sizes)} table{'' if len(data.table_sizes) == 1 else 's'}"
    log(
        f"model: {tables} ({kind}, d={config.dim}, {sum(data.table_sizes):,} rows), "
        f"bottom {dashed(config.bottom_mlp)},"
        f" top {config.interaction_width()}-{dashed(config.top_mlp)}, interaction {config.interaction}"
    )
    log(
        f"parameters: training {report['training']['count']:,} ({report['training']['bytes'] / 2**20:.1f} MiB),"
        f" inference {report['inference']['count']:,} ({report['inference']['bytes'] / 2**20:.1f} MiB)"
    )


def checked_load_model(run: Run) -> dict | None:
    """The ``--load-model`` checkpoint (``None`` without the flag), its flags checked against this run's before
    the data is read: a flag that changes the data is refused before any preprocessing."""
    if not run.load_model:
        return None
    ckpt = read_load_model(run.load_model)
    try:
        if run.inference_only:
            check_evaluated_data(ckpt, run.flags or {})
        else:
            check_resume_flags(ckpt, run.flags or {})
        check_flag_architecture(ckpt, run)
    except (UserError, ValueError) as error:
        raise UserError(f"--load-model {run.load_model}: {one_line(error)}") from None
    return ckpt


def check_flag_architecture(ckpt: dict, run: Run) -> None:
    """The checks of the checkpoint's model against the flags' (``check_evaluation``, ``check_training``) on what
    the flags alone decide, before the data is read: a resume given another ``--mlet-hidden`` (or d, MLP,
    interaction, quotient-remainder flag) was refused only once the data set had been preprocessed (Criteo
    Terabyte: hours). The table sizes and mixed-dimension widths come from the data: ``prepare`` checks them."""
    saved = ModelConfig.from_dict(ckpt["model_config"])
    wanted = replace(run.model, table_sizes=saved.table_sizes, md_dims=saved.md_dims)
    if run.inference_only:
        check_evaluation(ckpt, wanted)
    else:
        check_training(ckpt, wanted)


def read_data(run: Run, parallel: Parallel) -> DataBundle:
    """The run's data, on every process. A data set is preprocessed on first use; under torchrun one process
    does it and the others then reuse it (``turns.in_turns``), rather than all at once into one folder."""
    if run.data.dataset is None:
        return parallel.agree(lambda: build_data(run.data))
    return turns.in_turns(
        lambda: build_data(run.data), "reading (on first use, preprocessing) the data set", run.dist_timeout
    )


def prepare(
    run: Run, parallel: Parallel, ckpt: dict | None, data: DataBundle, mlperf: MLPerfLog | None = None
) -> tuple[DataBundle, Trainer]:
    """Model and trainer for ``data``, with the ``--load-model`` checkpoint ``ckpt`` taken over: the steps that may
    fail on one process alone.

    For ``--inference-only`` the model is the checkpoint's (its architecture
    checked against the flags first); otherwise it is built from the flags
    and the trainer resumes or starts from the checkpoint.
    """
    if ckpt is not None and (note := data_files_note(ckpt, data.files)) is not None:
        log(note)
    config = replace(run.model, table_sizes=tuple(data.table_sizes))
    reduction.check_qr_sizes(config)
    if run.mixed_dimension is not None:
        config = reduction.with_md_widths(config, run.mixed_dimension, data.id_counts() if data.id_counts else None)
        source = "training id counts" if data.id_counts else "table sizes (uniform ids)"
        alpha = run.mixed_dimension.temperature
        log(f"mixed dimensions: widths {reduction.md_widths_in_effect(config)} (from {source}, alpha {alpha})")
    if ckpt is not None and run.inference_only:
        if run.reporting.save_onnx and run.quantize_bits:
            raise UserError(
                "--save-onnx: the evaluated model has row-wise quantized tables, which are not exported to ONNX;"
                " export the float checkpoint (without --quantize-emb-with-bit)"
            )
        try:
            if run.reporting.save_onnx:
                refuse_quantized(ckpt, "--save-onnx (the ONNX export)")
            check_evaluation(ckpt, config)
            model = reduction.evaluated_model(ckpt, run.quantize_bits, parallel)
        except (UserError, ValueError, RuntimeError) as error:
            raise UserError(f"--load-model {run.load_model}: {one_line(error)}") from None
    else:
        model = build_model(parallel, config, run.train.seed)
    data, placement = place_data(
        data, run.data.placement, parallel.device, reserve_bytes(model, run.train), parallel.share, run.data.progress
    )
    log(f"input: {placement.reason}")
    watching = (
        observers(run.reporting, run.data.eval_split, parallel.device.type == "cuda", mlperf)
        if parallel.is_main
        else []
    )
    trainer = Trainer(run.train, data, model, parallel, flags=run.flags, observers=watching)
    if ckpt is not None:
        trainer.load(ckpt, run.load_model, evaluate_only=run.inference_only)
    return data, trainer


def build_model(parallel: Parallel, config: ModelConfig, seed: int) -> DLRM:
    """The model the flags describe; a model larger than the memory it goes to is one line, not torch's
    allocator error."""
    try:
        return parallel.build_model(config, seed=seed)
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if not isinstance(error, torch.OutOfMemoryError) and "allocate" not in str(error):
            raise
        where = "GPU" if parallel.device.type == "cuda" else "machine"
        asked = re.search(r"allocate (\d+) bytes", str(error))
        detail = f"one tensor of {int(asked.group(1)) / 2**30:,.1f} GiB" if asked else one_line(error)
        raise UserError(
            f"--arch-embedding-size: the model does not fit in this {where}'s memory ({detail}); use"
            " fewer or smaller tables (--max-ind-range, --cat-min-count), a smaller --arch-sparse-feature-size or"
            " --mlet-hidden, or quotient-remainder tables (--qr-flag)"
        ) from None


def reserve_bytes(model: DLRM, train: TrainConfig) -> int:
    """Device memory to leave free beside data held there: the optimizer's state (up to two copies of the
    parameters, allocated later) and room for activations, CUDA graphs and the allocator's slack."""
    sparse, dense = model.sparse_parameters().values(), model.dense_parameters().values()
    return state_bytes(train.optimizer, list(sparse), list(dense)) + ACTIVATION_RESERVE


def read_load_model(path: str) -> dict:
    """The ``--load-model`` checkpoint (an unreadable one is a :class:`UserError` naming the flag)."""
    try:
        return load_checkpoint(path)
    except UserError as error:
        raise UserError(f"--load-model {error}") from None


def inference_tables(config: ModelConfig) -> str:
    """What an inference checkpoint of a model with ``config`` holds (for the log line of ``--save-collapsed``)."""
    tables = reduction.stored_tables(config)
    if config.mlet_hidden:
        return f"MLET tables collapsed from K={config.mlet_hidden} to {tables}; no optimizer state"
    return f"the tables as trained ({tables}), nothing to collapse; no optimizer state"


def train_and_save(run: Run, trainer: Trainer) -> dict:
    """Train, write the checkpoints the flags ask for, and return the final test metrics."""
    if run.reporting.debug_mode:
        print_architecture(trainer.model)
        print_batches(trainer.data, trainer.batches_per_epoch)
        print_parameters(trainer.model, "initial")
    log("time/loss/accuracy (if enabled):")
    trainer.train()
    final = trainer.history[-1] if trainer.history else trainer.test()
    if run.reporting.debug_mode:
        print_parameters(trainer.model, "updated")
    if run.train.save_model:
        trainer.save()
        log(f"saved {run.train.save_model}")
    if run.save_collapsed or run.reporting.save_onnx:
        state = trainer.state()  # gathered on rank 0
        collapsed = collapsed_checkpoint(state.to_checkpoint()) if trainer.parallel.is_main else {}
        if run.save_collapsed:
            if trainer.parallel.is_main:
                atomic_save(collapsed, run.save_collapsed)
            log(f"saved {run.save_collapsed} (inference checkpoint: {inference_tables(trainer.model.config)})")
        if run.reporting.save_onnx and trainer.parallel.is_main:
            save_onnx(model_from_checkpoint(collapsed))
    return final


def save_onnx(inference_model: DLRM) -> None:
    """``--save-onnx``: write the inference model (MLET tables already collapsed) as ONNX, checked against
    onnxruntime."""
    from mlet.serving.onnx_export import export_onnx  # onnx is imported only when exporting

    report = export_onnx(inference_model, ONNX_FILE)
    log(f"saved {ONNX_FILE} (the inference model; onnxruntime max abs diff {report['max_abs_diff']:.3g})")


def execute(run: Run) -> dict:
    """Train and/or evaluate as the run says; returns the results payload.

    Under torchrun every process runs this; rank 0 alone prints and writes.
    """
    torch.manual_seed(run.train.seed)
    if run.use_gpu:
        torch.backends.cuda.matmul.allow_tf32 = run.tf32
        torch.backends.cudnn.allow_tf32 = run.tf32
    session = distributed.session(run.use_gpu, run.dist_backend, run.dist_timeout, run.train.optimizer)
    with session as parallel, contextlib.ExitStack() as held:
        for line in run.notes:
            log(line)
        if run.train.save_model:  # a second run writing the same checkpoint is refused, not left to replace it
            process_group.on_rank_zero(lambda: held.enter_context(sole_writer("--save-model", run.train.save_model)))
        mlperf = MLPerfLog() if run.reporting.mlperf_logging and parallel.is_main else None
        if mlperf is not None:
            mlperf.start()
        ckpt = parallel.agree(lambda: checked_load_model(run))
        data = read_data(run, parallel)
        data, trainer = parallel.agree(lambda: prepare(run, parallel, ckpt, data, mlperf))
        describe(trainer)
        for line in parallel.summary():
            log(line)
        if mlperf is not None:
            metrics.load_metric_functions()
            mlperf.run_started(
                run.train.seed,
                run.data.batch_size,
                mlperf_hyperparameters(run.train),
                {"train_samples": data.train.num_samples, "eval_samples": data.test.num_samples},
            )
        final = trainer.test() if run.inference_only else train_and_save(run, trainer)
        payload = trainer.results(final, trainer.validate(final))
        if run.inference_only and run.load_model:
            payload["checkpoint"] = {**(payload["checkpoint"] or {}), "file_bytes": os.path.getsize(run.load_model)}
            payload["served_bits"] = quantize.served_bits(trainer.model)  # None: float32 tables
            quantize.log_served_sizes(trainer.model, run.load_model, parallel.all_sum)
            if run.reporting.save_onnx and parallel.is_main:
                save_onnx(trainer.model.collapse())  # as upstream: the evaluated model is exported too
        elif run.quantize_bits:
            payload["quantized"] = [quantize.evaluate_quantized(trainer, bits) for bits in run.quantize_bits]
        if run.results_json and parallel.is_main:
            write_json(run.results_json, payload)
            log(f"results written to {run.results_json}")
        return payload


def mlperf_hyperparameters(train: TrainConfig) -> dict[str, object]:
    """The hyperparameter keys MLPerf's DLRM logs."""
    return {
        "opt_base_learning_rate": train.learning_rate,
        "opt_learning_rate_warmup_steps": train.lr_num_warmup_steps,
        "sgd_opt_base_learning_rate": train.learning_rate,
        "lr_decay_start_steps": train.lr_decay_start_step,
        "sgd_opt_learning_rate_decay_steps": train.lr_num_decay_steps,
        "sgd_opt_learning_rate_decay_poly_power": 2,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; bad input ends with one line on stderr and exit code 2.

    Under torchrun, argparse's own errors are the same on every process (rank 0
    reports them); the other checks (files, devices) may fail on one process
    only, so the processes join first and share what failed.
    """
    try:
        # SIGTERM ends the run as Ctrl-C does (no temporary file left, one line); so do, under torchrun, SIGHUP
        # (torchrun passes its own on) and the watch, once torchrun is gone
        under_torchrun = agent_watch.started_by_torchrun()
        with (
            sigterm_raises(),
            sighup_raises(under_torchrun),
            arrival_times(under_torchrun),  # when a SIGTERM came, against the others' ends (ended_before)
            agent_watch.watching(PROG, STARTED_BY),
        ):
            args = build_parser().parse_args(argv)
            process_group.start(args.dist_timeout)
            run = process_group.agree(lambda: validate(args))
            process_group.same_as_rank_zero(run.flags or {}, flag_differences)
            execute(run)
    except UserError as error:
        return error_ending(error)
    except RuntimeError as error:  # a failed collective (else a bug's error, raised again)
        return collective_ending(error)
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM, SIGHUP: under torchrun every process gets it
        return signal_ending(stop)
    except Exception:
        endings.record(BUG)
        raise
    return 0


BUG = "stopped with an error (see its traceback)"
"""How a process that a bug stopped ended, for the others' lines (:mod:`mlet.parallel.endings`)."""


def error_ending(error: UserError) -> int:
    """Exit status 2 after ``error``'s line (where this process writes it: :func:`process_group.error_line`); an
    error of this process alone is recorded for the others, whose collectives fail as this process ends."""
    with process_group.last_words(2):  # what torchrun's SIGTERM ends after it is the freeing of the failed step
        if (line := process_group.error_line(error)) is not None:
            print(f"{PROG}: error: {line}", file=sys.stderr)
        if not isinstance(error, process_group.SharedError):  # a shared one stops every process at once
            endings.record("stopped with an error (see its message)")
    return 2


def collective_ending(error: RuntimeError) -> int:
    """Exit status after a failed collective: another process has ended. With torchrun gone, its line and 143
    (the others stopped as it ended, before this one's watch saw it); else 1, after a line that says what the
    others recorded of their end, unless rank 0 recorded its own (it wrote its line: the signal's or its error's)
    or another surviving process wrote it first (:func:`endings.this_one_says`). Any other ``error`` is a bug's:
    recorded, and raised again."""
    with process_group.last_words() as ending:  # from the start: torchrun's SIGTERM may come any time now
        if not process_group.is_communication_failure(error):
            endings.record(BUG)
            raise error
        if agent_watch.agent_gone():
            agent_watch.say_agent_gone(PROG)
            ending.code = TERMINATED
        else:
            ended = endings.others()
            failure = process_group.communication_failure(error, ended)
            if failure is not None and endings.this_one_says(ended):
                print(f"{PROG}: error: {process_group.error_line(failure)}", file=sys.stderr)
            ending.code = 1
    return ending.code


def signal_ending(stop: KeyboardInterrupt) -> int:
    """Exit status after Ctrl-C (130), SIGTERM (143) or SIGHUP (129, under torchrun), with the line on rank 0 alone
    (torchrun passes a signal on to every process); recorded for the others, whose collectives fail as this process
    ends, in case it was signalled alone. Where torchrun has gone, its watch says why (here, if it has not yet:
    the processes may have stopped together, the run saved, before rank 0's watch looked) and the store went with
    it. A SIGTERM that came after another process had ended is torchrun stopping the rest: this process says so
    instead, with status 1, as where its collective fails first (:func:`ended_before`)."""
    with process_group.last_words() as ending:
        if (earlier := ended_before(stop)) is not None:
            if endings.this_one_says(earlier):
                failure = process_group.ended_first(earlier, "then this process got SIGTERM")
                print(f"{PROG}: error: {process_group.error_line(failure)}", file=sys.stderr)
            ending.code = 1
        elif agent_watch.agent_gone():
            agent_watch.say_agent_gone(PROG)
            ending.code = stopped(PROG, stop, say=False)
        else:
            ending.code = stopped(PROG, stop, say=launched_rank() == 0)
            endings.record_stop(stop)
    return ending.code


def ended_before(stop: KeyboardInterrupt) -> endings.Endings | None:
    """Where ``stop`` is a SIGTERM that came after another process of the run had recorded its end: what the
    others recorded before it (else ``None``). torchrun stops the other processes so, about a tenth of a second
    after one ends; a process busy outside collectives (a long step, a test, a checkpoint) gets that SIGTERM before
    its next collective fails, and said ``terminated (SIGTERM)`` as if the whole run had been signalled. torchrun
    passes a SIGTERM to the whole run on to every process at once, before any has recorded its end. Processes not
    started by torchrun have no one that stops the rest: their SIGTERMs come from outside, however staggered. Nor
    is a SIGTERM that the processes agreed to stop for together (they saved the run first: mlet.training.stops).
    Nor, on one host, where no process that recorded its end has been reaped: torchrun stops the rest only after
    it has waited for the one that ended, so a SIGTERM to the whole run reached the others while they were still
    there, however late it came here (a loaded machine can leave this process unscheduled for longer than another
    takes to record its end)."""
    if type(stop) is not Terminated or stop.agreed or not agent_watch.started_by_torchrun() or agent_watch.agent_gone():
        return None
    # the kernel's stamp of the signal's arrival; the handler's clock is late by however long the main thread was
    # busy, and on a loaded machine that was longer than another rank took to record its end
    came = arrived(signal.SIGTERM) or stop.at
    earlier = endings.others().before(came)
    return earlier if earlier.first is not None and not earlier.none_reaped() else None


def cli() -> None:
    """The ``dlrm-mlet`` console command (``python dlrm_mlet.py``)."""
    process_group.exit_process(exit_status(PROG, main))


if __name__ == "__main__":
    cli()
