"""Host memory for embedding tables: transparent huge pages on Linux.

A training step reads and writes tens of thousands of table rows at random
places in tables of gigabytes. With 4 KiB pages nearly every row access also
misses the TLB and walks the page table (two walks under a hypervisor); with
2 MiB pages the walks mostly vanish. What it gains (``bench/huge_pages.py``):
docs/performance.md.

Linux backs a range with huge pages when it is advised ``MADV_HUGEPAGE``
before its first touch and ``/sys/kernel/mm/transparent_hugepage/enabled``
is ``always`` or ``madvise`` (the common default). Elsewhere the advice is
skipped and memory is ordinary. ``DLRM_MLET_HUGE_PAGES=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import sys
from collections.abc import Sequence

import torch
from torch import Tensor

HUGE_PAGE_BYTES = 2 << 20
ENV_SWITCH = "DLRM_MLET_HUGE_PAGES"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages_enabled() -> bool:
    """True unless ``DLRM_MLET_HUGE_PAGES=0`` (read at each allocation)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def transparent_huge_pages_mode() -> str:
    """The kernel's THP mode (``always``, ``madvise`` or ``never``); ``unavailable`` off Linux or without THP."""
    try:
        with open(THP_SETTING) as f:
            setting = f.read()
    except OSError:
        return "unavailable"
    for word in setting.split():
        if word.startswith("["):
            return word.strip("[]")
    return "unavailable"


@functools.cache
def _libc_madvise():
    """libc's ``madvise`` through ctypes, or ``None`` where there is none."""
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols, libc's among them
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    libc.madvise.restype = ctypes.c_int
    return libc.madvise


def advise_huge_pages(tensor: Tensor) -> int:
    """Advise ``MADV_HUGEPAGE`` for the whole 2 MiB pages inside ``tensor``'s memory.

    Call on a contiguous tensor before its memory is first written: pages
    already present stay small. Returns the number of bytes advised (0 when skipped: not a CPU
    tensor, smaller than a huge page, switched off, or no ``madvise``).
    """
    madvise = _libc_madvise()
    if madvise is None or tensor.device.type != "cpu" or not huge_pages_enabled():
        return 0
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first = -(-start // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
    last = end // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
    if last <= first:
        return 0
    if madvise(first, last - first, mmap.MADV_HUGEPAGE) != 0:
        return 0  # e.g. a kernel built without THP: ordinary pages, nothing lost
    return last - first


def empty_table(
    shape: Sequence[int], device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``torch.empty(shape)`` for a table read and written at random rows: on the CPU, advised huge pages."""
    tensor = torch.empty(tuple(shape), device=device, dtype=dtype)
    advise_huge_pages(tensor)
    return tensor


def zeros_like_table(tensor: Tensor) -> Tensor:
    """``torch.zeros_like(tensor)`` (contiguous) through :func:`empty_table` (optimizer state of a table)."""
    return empty_table(tensor.shape, tensor.device, tensor.dtype).zero_()


def huge_page_bytes(tensor: Tensor) -> int:
    """Bytes of ``tensor``'s memory currently backed by transparent huge pages (Linux; else 0).

    Read from ``/proc/self/smaps``: the ``AnonHugePages`` of every mapping
    overlapping the tensor (a mapping may extend past it).
    """
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    total, overlapping = 0, False
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                fields = line.split()
                if "-" in fields[0] and len(fields) >= 5:
                    lo, hi = (int(v, 16) for v in fields[0].split("-"))
                    overlapping = lo < end and hi > start
                elif overlapping and fields[0] == "AnonHugePages:":
                    total += int(fields[1]) * 1024
    except OSError:
        return 0
    return total
