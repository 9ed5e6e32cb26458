"""``--compile``: which parts of the step are compiled, and how inductor compiles them."""

from __future__ import annotations

import pytest
import torch
from helpers import random_inputs, small_config

from dlrm_model import DLRM
from mlet.training.compilation import compiled
from mlet.training.train_step import COMPILED_PARTS, compiled_from, compiled_parts


@pytest.mark.parametrize(("environment", "threads"), [(None, 1), ("4", 8)])
def test_compiling_keeps_inductor_in_this_process_unless_the_environment_sets_its_threads(
    environment: str | None, threads: int, monkeypatch
) -> None:
    """``--compile`` compiles in the process (no pool of workers to start and wait for at exit), unless
    ``TORCHINDUCTOR_COMPILE_THREADS`` asks for a number of its own."""
    import torch._inductor.config as inductor_config

    if environment is None:
        monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS", raising=False)
    else:
        monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", environment)
    with inductor_config.patch(compile_threads=8):  # the config's own patch: it restores the value on leaving
        compiled(lambda x: x, "default")  # torch.compile is lazy: nothing is compiled yet
        assert inductor_config.compile_threads == threads


def test_compiled_parts_are_used_only_inside_the_block_and_the_methods_come_back() -> None:
    """``--compile`` hands the graphed step's forward a compiled bottom and top MLP (the interaction runs
    between them, uncompiled): the model uses them inside ``compiled_from`` (and only there, also when the
    block fails), with the interaction they give the model's logits, and ``none`` compiles nothing."""
    model = DLRM(small_config(hidden=0), seed=0)
    dense, features = random_inputs(model.config, batch=4, seed=1)
    plain = model(dense, features)
    calls = []

    def stand_in(name: str):
        def part(*tensors: torch.Tensor) -> torch.Tensor:
            calls.append((name, [tuple(t.shape) for t in tensors]))
            return getattr(DLRM, name)(model, *tensors)

        return part

    assert compiled_parts(model, "none") is None
    parts = {name: stand_in(name) for name in COMPILED_PARTS}
    with compiled_from(model, parts):
        torch.testing.assert_close(model(dense, features), plain)
    width = model.config.interaction_width()
    assert calls == [("bottom_features", [(4, dense.shape[1])]), ("top_logits", [(4, width)])]
    with pytest.raises(RuntimeError), compiled_from(model, parts):
        raise RuntimeError("a failed capture")
    assert not set(COMPILED_PARTS) & set(vars(model))
    calls.clear()
    torch.testing.assert_close(model(dense, features), plain)
    assert calls == []
