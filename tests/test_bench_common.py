"""The benchmarks' shared result writer (bench/common.py ``save``): where a ``--out`` name or path lands."""

from __future__ import annotations

import importlib.util
import json
from types import ModuleType

import pytest
from helpers import ROOT


@pytest.fixture
def common(tmp_path, monkeypatch) -> ModuleType:
    """bench/common.py (the benchmarks import it as ``common``, from their folder), its results folder in
    ``tmp_path``."""
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "bench" / "common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
    return module


@pytest.mark.parametrize(
    ("out", "written"),
    [
        ("cli_throughput", "results/cli_throughput.json"),
        ("cli_throughput.json", "results/cli_throughput.json"),
        ("runs/x.json", "results/runs/x.json"),  # relative: under the results folder, its folder made
        ("{tmp}/elsewhere/x.json", "elsewhere/x.json"),  # absolute, as --out /tmp/x.json
        ("{tmp}/elsewhere/y", "elsewhere/y.json"),
    ],
)
def test_save_adds_json_only_where_the_name_lacks_it(common, tmp_path, out: str, written: str) -> None:
    path = common.save(out.format(tmp=tmp_path), {"rows": [1]})
    assert path == tmp_path / written
    record = json.loads(path.read_text())
    assert record["rows"] == [1] and record["benchmark"] == path.stem
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no x.json.json beside it
