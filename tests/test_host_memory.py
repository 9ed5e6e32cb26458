"""Embedding tables on transparent huge pages (host_memory)."""

from __future__ import annotations

import pytest
import torch

from mlet.kernels import host_memory
from mlet.training.optimizers import adagrad_state
from mlet_layers import EmbeddingTables

THP_MODE = host_memory.transparent_huge_pages_mode()
needs_thp = pytest.mark.skipif(
    THP_MODE not in ("always", "madvise"), reason=f"transparent huge pages are '{THP_MODE}' here"
)
needs_madvise_mode = pytest.mark.skipif(THP_MODE != "madvise", reason="only in 'madvise' mode does the advice decide")
TABLE_ROWS = 300_000  # x 64 floats = 73 MiB: above glibc's largest mmap threshold (32 MiB), so fresh untouched memory


def advised_bytes(tensor: torch.Tensor) -> int:
    """Bytes of ``tensor``'s memory in mappings that carry the kernel's huge-page advice (``hg`` in VmFlags)."""
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    total, inside = 0, 0
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:
                lo, hi = (int(v, 16) for v in fields[0].split("-"))
                inside = max(0, min(hi, end) - max(lo, start))
            elif fields[0] == "VmFlags:" and "hg" in fields[1:]:
                total += inside
    return total


def advised_for_huge_pages(tensor: torch.Tensor) -> bool:
    """Whether the advice covers the tensor but for the partial huge pages at its two ends."""
    return advised_bytes(tensor) >= tensor.numel() * tensor.element_size() - 2 * host_memory.HUGE_PAGE_BYTES


# How much of advised memory the kernel backs with huge pages depends on the free 2 MiB blocks it finds at the
# first touch: on a machine busy with other jobs it backed 13 of the 36 pages of a table (CI, 2026-11-30). So the
# tests below check the advice (what this project controls) and that huge pages back at least part of it.
@needs_thp
def test_tables_are_backed_by_huge_pages():
    tables = EmbeddingTables([TABLE_ROWS - 1000, 1000], dim=4, hidden=64, seed=0)
    assert advised_for_huge_pages(tables.weight)
    assert host_memory.huge_page_bytes(tables.weight) >= host_memory.HUGE_PAGE_BYTES


@needs_thp
def test_adagrad_state_of_a_table_is_on_huge_pages_and_zero():
    weight = host_memory.empty_table((TABLE_ROWS, 64)).uniform_()
    state = adagrad_state(weight)["sum"]
    assert state.shape == weight.shape and state.dtype == weight.dtype
    assert not state.any()
    assert advised_for_huge_pages(state)
    assert host_memory.huge_page_bytes(state) >= host_memory.HUGE_PAGE_BYTES


@needs_madvise_mode
def test_switching_off_leaves_ordinary_pages(monkeypatch):
    monkeypatch.setenv(host_memory.ENV_SWITCH, "0")
    table = host_memory.empty_table((TABLE_ROWS, 64))
    assert host_memory.advise_huge_pages(table) == 0
    table.fill_(1.0)
    assert host_memory.huge_page_bytes(table) == 0


def test_advice_covers_the_whole_huge_pages_inside_the_tensor_and_nothing_outside():
    assert host_memory.advise_huge_pages(torch.empty(8, 8)) == 0  # no whole huge page in 256 bytes
    table = torch.empty(TABLE_ROWS, 64)
    advised = host_memory.advise_huge_pages(table)
    if host_memory._libc_madvise() is None:
        assert advised == 0
        return
    page = host_memory.HUGE_PAGE_BYTES
    assert advised % page == 0
    assert table.nbytes - 2 * page < advised <= table.nbytes


def test_tables_on_huge_pages_hold_the_same_values(monkeypatch):
    advised = EmbeddingTables([TABLE_ROWS], dim=4, hidden=8, seed=3)
    monkeypatch.setenv(host_memory.ENV_SWITCH, "off")
    ordinary = EmbeddingTables([TABLE_ROWS], dim=4, hidden=8, seed=3)
    assert torch.equal(advised.weight, ordinary.weight)
    assert torch.equal(advised.projection, ordinary.projection)


@pytest.mark.parametrize(
    ("value", "enabled"), [(None, True), ("1", True), ("0", False), ("off", False), ("False", False)]
)
def test_switch_values(monkeypatch, value, enabled):
    if value is None:
        monkeypatch.delenv(host_memory.ENV_SWITCH, raising=False)
    else:
        monkeypatch.setenv(host_memory.ENV_SWITCH, value)
    assert host_memory.huge_pages_enabled() is enabled
