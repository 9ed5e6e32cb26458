"""The reproduction's bookkeeping: run names, learning-rate choice and widening, the d-reduction headline."""

from __future__ import annotations

import math
import random

import pytest

from mlet.repro.experiments import Config, RunSpec, grid_configs, lr_text, parse_run_name
from mlet.repro.protocols import best_lr, by_config_and_lr, d_reductions, next_lr, select, widest_matched
from mlet.repro.run_results import RunResult


def result(opt: str, config: Config, lr: float, seed: int, test_auc: float, val_auc: float | None = None) -> RunResult:
    """A hand-made run result."""
    spec = RunSpec(opt, config, lr, seed)
    val = test_auc if val_auc is None else val_auc
    return RunResult(
        spec,
        test_auc,
        0.5 - test_auc / 10,
        val,
        0.5 - val / 10,
        1000.0,
        4 * config.dim * 100,
        4 * (config.hidden or config.dim) * 100,
    )


def test_run_names_round_trip_and_rates_print_stably() -> None:
    for spec in [
        RunSpec("sgd", Config(4, 64), 0.2, 1),
        RunSpec("adagrad", Config(32), 0.0125, 3),
        RunSpec("sgd", Config(2, 16), 12.8, 2),
    ]:
        assert parse_run_name(spec.name) == spec
    assert RunSpec("sgd", Config(4, 64), 0.05 * 4, 1).name == "sgd_mlet_d4_k64_lr0.2_s1"
    assert lr_text(0.2 * 4 * 4) == "3.2" and lr_text(0.2 / 4 / 4) == "0.0125"
    with pytest.raises(ValueError):
        parse_run_name("sgd_base_d4_s1")


def test_grid_leaves_out_k_below_d() -> None:
    configs = grid_configs([2, 4], [4, 16], [8, 64])
    assert [c.label for c in configs] == ["base_d2", "base_d4", "mlet_d4_k8", "mlet_d4_k64", "mlet_d16_k64"]


def test_best_lr_uses_mean_validation_auc_and_a_diverged_seed_disqualifies_a_rate() -> None:
    c = Config(4)
    runs = [
        result("sgd", c, 0.2, 1, 0.70),
        result("sgd", c, 0.2, 2, 0.72),
        result("sgd", c, 0.8, 1, 0.75),
        result("sgd", c, 0.8, 2, 0.74),
    ]
    runs += [result("sgd", c, 3.2, 1, 0.90), result("sgd", c, 3.2, 2, math.nan)]  # one seed diverged
    by_lr = by_config_and_lr(runs)[("sgd", c)]
    assert best_lr(by_lr, seeds=2) == 0.8
    assert (
        best_lr({0.2: [result("sgd", c, 0.2, 1, 0.7)], 0.8: [result("sgd", c, 0.8, 1, 0.7)]}) == 0.2
    )  # ties: the smaller rate
    assert (
        best_lr({0.2: [result("sgd", c, 0.2, 1, 0.7)], 0.8: [result("sgd", c, 0.8, 1, 0.9)]}, seeds=2) is None
    )  # no rate has 2 seeds


@pytest.mark.parametrize(
    ("lrs", "best", "expected"),
    [
        ([0.05, 0.2, 0.8], 0.8, 3.2),  # top edge: widen up
        ([0.05, 0.2, 0.8], 0.05, 0.0125),  # bottom edge: widen down
        ([0.05, 0.2, 0.8], 0.2, None),  # interior: done
        ([0.05, 0.2, 0.8, 3.2, 12.8], 12.8, None),  # two steps up already, max_widen=2
        ([0.0125, 0.05, 0.2, 0.8], 0.8, 3.2),  # widened down once, up is still free
    ],
)
def test_next_lr_widens_beyond_the_edge_until_interior_or_the_limit(
    lrs: list[float], best: float, expected: float | None
) -> None:
    assert next_lr(lrs, best, 4.0, initial=[0.05, 0.2, 0.8], max_widen=2) == expected


def test_tuned_protocol_chooses_on_validation_and_reports_test() -> None:
    c = Config(8)
    # 0.8 is best on validation, 0.2 would be best on test: the tuned protocol must report 0.8's test AUC.
    runs = [result("sgd", c, 0.2, s, test_auc=0.80, val_auc=0.70) for s in (1, 2)] + [
        result("sgd", c, 0.8, s, test_auc=0.75, val_auc=0.78) for s in (1, 2)
    ]
    runs += [result("sgd", c, 3.2, s, test_auc=0.74, val_auc=0.71) for s in (1, 2)]
    (tuned,) = select(runs, "tuned", {"sgd": 0.2})
    (paper,) = select(runs, "paper", {"sgd": 0.2})
    assert tuned.lr == 0.8 and tuned.stat("test_auc") == (0.75, 0.0) and not tuned.at_edge
    assert paper.lr == 0.2 and paper.stat("test_auc")[0] == 0.80
    assert select(runs, "paper", {"sgd": 0.1}) == []  # no run at that rate
    runs += [result("sgd", c, 12.8, s, test_auc=0.7, val_auc=0.9) for s in (1, 2)]
    assert select(runs, "tuned", {})[0].at_edge


def baseline_grid(aucs: dict[int, list[float]], opt: str = "sgd", lr: float = 0.2) -> list[RunResult]:
    """Baseline runs: width -> test AUC per seed (seeds 1, 2, ...)."""
    return [result(opt, Config(d), lr, seed + 1, auc) for d, values in aucs.items() for seed, auc in enumerate(values)]


def test_d_reduction_on_hand_made_results() -> None:
    runs = baseline_grid({2: [0.70, 0.70], 4: [0.72, 0.74], 8: [0.75, 0.77], 16: [0.78, 0.80], 32: [0.79, 0.81]})
    runs += [
        result("sgd", Config(2, 64), 0.2, s, auc) for s, auc in ((1, 0.77), (2, 0.79))
    ]  # mean 0.78: beats d=8 (0.76), not d=16 (0.79)
    runs += [
        result("sgd", Config(4, 64), 0.2, s, auc) for s, auc in ((1, 0.81), (2, 0.81))
    ]  # beats everything: a lower bound
    runs += [result("sgd", Config(8, 64), 0.2, s, auc) for s, auc in ((1, 0.60), (2, 0.60))]  # matches none
    selections = select(runs, "paper", {"sgd": 0.2})
    strict = {r.config: r for r in d_reductions(selections, "strict")}
    assert (strict[Config(2, 64)].matched_dim, strict[Config(2, 64)].factor) == (8, 4.0)
    # seed 1: 0.77 >= d=8's 0.75, < d=16's 0.78 -> 4x; seed 2: 0.79 >= d=8's 0.77, < 0.80 -> 4x
    assert strict[Config(2, 64)].per_seed == [4.0, 4.0] and not strict[Config(2, 64)].at_grid_end
    assert (strict[Config(4, 64)].matched_dim, strict[Config(4, 64)].factor, strict[Config(4, 64)].at_grid_end) == (
        32,
        8.0,
        True,
    )
    assert (strict[Config(8, 64)].matched_dim, strict[Config(8, 64)].factor, strict[Config(8, 64)].per_seed) == (
        None,
        0.0,
        [0.0, 0.0],
    )
    lenient = {r.config: r for r in d_reductions(selections, "within_std")}
    assert lenient[Config(2, 64)].matched_dim == 16  # 0.78 >= 0.79 - std(0.78, 0.80) = 0.7759


def test_d_reduction_compares_within_protocol_and_optimizer() -> None:
    runs = baseline_grid({2: [0.70], 8: [0.80]}, "sgd") + baseline_grid({2: [0.60], 8: [0.65]}, "adagrad", lr=0.05)
    runs += [result("sgd", Config(2, 16), 0.2, 1, 0.70), result("adagrad", Config(2, 16), 0.05, 1, 0.70)]
    reductions = {r.optimizer: r for r in d_reductions(select(runs, "paper", {"sgd": 0.2, "adagrad": 0.05}))}
    assert reductions["sgd"].matched_dim == 2 and reductions["adagrad"].matched_dim == 8


def test_widest_matched_property_on_random_curves() -> None:
    """The matched width and every narrower baseline are matched; the next wider one is not (non-monotone curves
    included)."""
    rng = random.Random(0)
    for _ in range(300):
        baselines = {
            d: (rng.uniform(0.7, 0.8), rng.uniform(0, 0.01))
            for d in rng.sample([2, 4, 8, 16, 32, 64], rng.randint(1, 6))
        }
        mlet = rng.uniform(0.69, 0.81)
        for rule in ("strict", "within_std"):
            ok = {d: mlet >= m - (s if rule == "within_std" else 0.0) for d, (m, s) in baselines.items()}
            matched = widest_matched(mlet, baselines, rule)
            widths = sorted(baselines)
            if matched is None:
                assert not ok[widths[0]]
            else:
                assert all(ok[d] for d in widths if d <= matched)
                wider = [d for d in widths if d > matched]
                assert not wider or not ok[wider[0]]
    # a dip of the baseline curve does not count: 0.78 beats d=16 (0.77) but not d=8 (0.79)
    assert widest_matched(0.78, {2: (0.70, 0.0), 8: (0.79, 0.0), 16: (0.77, 0.0)}, "strict") == 2
    assert widest_matched(math.nan, {2: (0.7, 0.0)}, "strict") is None
    with pytest.raises(ValueError):
        widest_matched(0.7, {}, "loose")


def test_config_labels_of_every_method_round_trip() -> None:
    from mlet.repro.experiments import Config, grid_configs, parse_run_name

    methods = {"qr": ([4, 16], [4], [4, 16]), "md": ([8], [8], [0.3])}
    configs = grid_configs([4], [4], [64], methods)
    labels = [c.label for c in configs]
    assert labels == [
        "base_d4",
        "mlet_d4_k64",
        "qr_d4_c4",
        "qr_d16_c4",
        "mlet_qr_d4_k64_c4",
        "qr_d4_c16",
        "qr_d16_c16",
        "mlet_qr_d4_k64_c16",
        "md_d8_t0.3",
        "mlet_md_d8_k64_t0.3",
    ]
    assert all(Config.from_label(label) == c for label, c in zip(labels, configs))
    spec = parse_run_name("adagrad_mlet_md_d8_k64_t0.3_lr0.05_s2")
    assert spec.config == Config(8, 64, "md", temperature=0.3) and spec.lr == 0.05 and spec.seed == 2
    assert Config(16, 0, "qr", collisions=4).flags() == ["--qr-flag", "--qr-collisions=4"]
    assert Config(8, 64, "md", temperature=0.3).method_name == "MLET K=64 + MD a=0.3"
    for bad in ("base_d4_k64", "qr_d4", "md_d8_c4", "mlet_d4"):
        with pytest.raises(ValueError, match="not a config label"):
            Config.from_label(bad)
    assert Config(4).is_baseline and not Config(4, 0, "qr", collisions=4).is_baseline


def test_pareto_frontier_levels_and_smallest_model() -> None:
    from mlet.repro.experiments import Config
    from mlet.repro.pareto import Point, frontier, levels, smallest_reaching

    def point(config: Config, bits, auc: float, size: int) -> Point:
        return Point("paper", "sgd", config, bits, auc, 0.0, size)

    panel = [
        point(Config(8), None, 0.75, 800),
        point(Config(16), None, 0.76, 1600),
        point(Config(8), 8, 0.749, 320),
        point(Config(4, 64), None, 0.755, 400),
        point(Config(16, 0, "qr", collisions=4), None, math.nan, 500),  # diverged: never chosen
        point(Config(2, 64), None, 0.74, 200),
    ]
    assert [p.config.dim for p in levels(panel)] == [8, 16]
    assert smallest_reaching(panel, "MLET K=64", 0.75).config.dim == 4  # d=2 is smaller but below the level
    assert smallest_reaching(panel, "baseline int8", 0.75) is None
    assert smallest_reaching(panel, "QR c=4", 0.0) is None
    assert [(p.method, p.bytes) for p in frontier(panel)] == [
        ("MLET K=64", 200),
        ("baseline int8", 320),
        ("MLET K=64", 400),
        ("baseline", 1600),
    ]
