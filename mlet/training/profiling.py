"""``--enable-profiling``: a torch.profiler trace of a few training steps and the table of the top ops.

The first :data:`SKIPPED_STEPS` steps are left out (they allocate and, on a
GPU, capture the CUDA graph); the next ``steps`` are recorded, on the CPU and,
when training on a GPU, with CUDA activity. Written at the end of the window
(or of the run, if it is shorter):

* ``PREFIX.json``: the Chrome trace (chrome://tracing, Perfetto; with
  ``--tensor-board-filename DIR`` also ``DIR/NAME.pt.trace.json``, ``NAME`` the prefix's file name, which
  TensorBoard's PyTorch profiler plugin reads);
* ``PREFIX.prof``: the top ops by self time, also printed.

Each is written under a temporary name of this process and renamed into place,
so two runs given the same prefix never leave a torn or mixed file (the last
one's stays).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from mlet.core.files import replace_atomically
from mlet.core.launch import log
from mlet.training.observers import Observer

SKIPPED_STEPS = 2
DEFAULT_STEPS = 5
TOP_OPS = 15


class StepProfiler(Observer):
    """Profiles training steps ``SKIPPED_STEPS + 1 .. SKIPPED_STEPS + steps`` and writes the trace and table."""

    def __init__(
        self, prefix: str = "dlrm_mlet", steps: int = DEFAULT_STEPS, cuda: bool = False, tensorboard_dir: str = ""
    ) -> None:
        self.prefix, self.steps, self.tensorboard_dir, self.cuda = prefix, steps, tensorboard_dir, cuda
        activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
        self.profiler = profile(activities=activities, record_shapes=True)
        self.recorded = 0
        self.state = "waiting"  # -> recording -> written

    def stepped(self, iteration: int) -> None:
        """Start after the skipped steps; stop and write after ``steps`` recorded ones."""
        if self.state == "waiting" and iteration >= SKIPPED_STEPS:
            self.profiler.start()
            self.state = "recording"
        elif self.state == "recording":
            self.recorded += 1
            if self.recorded >= self.steps:
                self.write()

    def finished(self, reached_target: bool) -> None:
        """A run shorter than the window: write what was recorded."""
        if self.state == "recording":
            self.write()
        elif self.state == "waiting":
            log(f"profiling: the run ended within the first {SKIPPED_STEPS} steps, before anything was recorded")

    def write(self) -> None:
        """Stop the profiler; write the Chrome trace and the top-ops table, and print the table.

        The command line checked the folder before training; should writing fail anyway (the disk filled, the
        folder's permissions changed), one line says so and training goes on.
        """
        self.profiler.stop()
        self.state = "written"
        sort = "self_cuda_time_total" if self.cuda else "self_cpu_time_total"
        table = self.profiler.key_averages().table(sort_by=sort, row_limit=TOP_OPS)
        try:
            written = self.write_files(table)
        except OSError as error:
            where = error.filename or "the trace"
            log(f"profiling: cannot write {where} ({error.strerror or error}); training goes on")
            return
        log(
            f"profiling: {self.recorded} training steps after the first {SKIPPED_STEPS}; "
            f"trace {written}, top ops {self.prefix}.prof:"
        )
        log(table)

    def write_files(self, table: str) -> str:
        """Write the table, the trace and its TensorBoard copy, each atomically; returns where the trace went, for
        the log."""
        replace_atomically(Path(f"{self.prefix}.prof"), lambda tmp: tmp.write_text(table + "\n"))
        trace = Path(f"{self.prefix}.json")
        replace_atomically(trace, lambda tmp: self.profiler.export_chrome_trace(str(tmp)))
        if not self.tensorboard_dir:
            return str(trace)
        target = Path(self.tensorboard_dir) / f"{Path(self.prefix).name}.pt.trace.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(target, lambda tmp: shutil.copyfile(trace, tmp))
        return f"{trace} and {target}"
