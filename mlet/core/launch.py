"""Which process this is, from torchrun's launch environment, and the run's log.

Every layer may need to know whether it runs in the process that prints and
writes (rank 0, or the only process); the process groups themselves are
:mod:`mlet.parallel.process_group`'s.
"""

from __future__ import annotations

import os
import sys

import torch.distributed as dist
from tqdm import tqdm


def launched_world_size() -> int:
    """Processes in the run, from torchrun's ``WORLD_SIZE`` (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank, from torchrun's ``RANK`` (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def launched_local_rank() -> int:
    """This process's rank on its host, from torchrun's ``LOCAL_RANK`` (0 when not launched by torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """True in a single-process run and on rank 0 of a multi-process one: the process that prints and writes."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return launched_rank() == 0


def log(message: str) -> None:
    """Print a log line without breaking the progress bar (on rank 0 alone, in a multi-process run)."""
    if not is_main_process():
        return
    with tqdm.external_write_mode(file=sys.stdout):
        # one write, line and end together (tqdm.write makes two): a line of another thread (torchrun's watch, on
        # stderr) that came between them was glued to this one's end, and a raise between them lost the end
        sys.stdout.write(f"{message}\n")
        sys.stdout.flush()
