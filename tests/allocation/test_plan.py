from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import chain
import models
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgetqs.allocation.evaluate import measure, simulated_weights
from edgetqs.allocation.plan import InfeasibleBudgetError, Plan, PlanOptions, make_plan, pareto, parse_pin, parse_size
from edgetqs.allocation.targets import find_target
from edgetqs.core.contexts import read_record, select_contexts
from edgetqs.core.model import load_model
from edgetqs.core.rollout import infer_spec
from edgetqs.errors import BadInputError
from edgetqs.sensitivity.scores import ProbeSettings
from edgetqs.sensitivity.sweep import run_sweep


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    c = chain.scored(models.deep_mlp(tmp_path_factory.mktemp("plan") / "deep.onnx"), k=6, horizon=8, rows=100)
    return c.model, c.spec, c.contexts, c.scores


PI = find_target("raspberrypi")


def _allowed(plan: Plan, m, target, runtime) -> bool:
    return all(
        x.precision.name in {p.name for p in target.allowed(runtime, m.op_type(x.name), m.role(x.name))} | {"int8-tensor", "int4-tensor"}
        for x in plan.tensors
    )


def test_parse_size() -> None:
    assert parse_size("1234") == 1234 and parse_size("2MB") == 2_000_000 and parse_size("512KiB") == 524288
    assert parse_size("1.5 MiB") == 1572864 and parse_size("10kb") == 10000
    for bad in ("", "12 parsecs", "MB", "-3"):
        with pytest.raises(BadInputError):
            parse_size(bad)


def test_plan_fits_the_budget_and_the_runtime(scored) -> None:
    m, _, _, s = scored
    for ratio in (0.15, 0.3, 0.6, 1.0):
        p = make_plan(s, m, PI, PlanOptions(ratio=ratio))
        assert p.weight_bytes <= p.budget_bytes and p.headroom_bytes >= 0
        assert _allowed(p, m, PI, "ort")
        assert {x.name for x in p.tensors} == {w.name for w in m.weights}
    full = make_plan(s, m, PI, PlanOptions(ratio=1.0))
    assert all(x.precision.name == "fp32" for x in full.tensors) and full.predicted_error == 0.0


def test_sensitive_tensors_get_more_bits(scored) -> None:
    m, _, _, s = scored
    p = make_plan(s, m, PI, PlanOptions(ratio=0.25))
    gain = {g.name: g.gain for g in s.groups}
    bits = {x.name: int(re.sub(r"\D.*", "", x.precision.name.removeprefix("fp").removeprefix("int"))) for x in p.tensors}
    weights = [x.name for x in p.tensors if x.name.endswith("weight")]
    hi = max(weights, key=lambda n: gain[n])
    lo = min(weights, key=lambda n: gain[n])
    assert bits[hi] >= bits[lo]


def test_exact_is_never_worse_than_greedy(scored) -> None:
    m, _, _, s = scored
    for ratio in np.linspace(0.13, 0.9, 9):
        e = make_plan(s, m, PI, PlanOptions(ratio=float(ratio)))
        g = make_plan(s, m, PI, PlanOptions(ratio=float(ratio), allocator="greedy"))
        assert g.weight_bytes <= g.budget_bytes
        assert e.predicted_error <= g.predicted_error * (1 + 1e-6) + 1e-12


def test_infeasible_budget_gives_the_smallest_feasible_size(scored) -> None:
    m, _, _, s = scored
    with pytest.raises(InfeasibleBudgetError) as err:
        make_plan(s, m, PI, PlanOptions(budget_bytes=100))
    smallest = int(re.search(r"smallest feasible size ([\d,]+) bytes", str(err.value)).group(1).replace(",", ""))
    assert make_plan(s, m, PI, PlanOptions(budget_bytes=smallest)).weight_bytes == smallest


def test_reserve_leaves_bytes_unspent_under_the_same_budget(scored) -> None:
    """--reserve: the knapsack spends the budget less the reserve; the plan keeps the whole budget (convert may store
    up to it: a centred window's level weight). Too large a reserve is infeasible, with the budget it would need."""
    m, _, _, s = scored
    plain = make_plan(s, m, PI, PlanOptions(ratio=0.4))
    kept = make_plan(s, m, PI, PlanOptions(ratio=0.4, reserve_bytes=2000))
    assert kept.budget_bytes == plain.budget_bytes and kept.weight_bytes <= kept.budget_bytes - 2000 < plain.weight_bytes
    assert kept.options.reserve_bytes == 2000 and Plan.model_validate_json(kept.model_dump_json()).options.reserve_bytes == 2000
    smallest = make_plan(s, m, PI, PlanOptions(budget_bytes=10**9, lowest_bits=2)).min_feasible_bytes
    with pytest.raises(InfeasibleBudgetError, match=f"raise the budget to at least {smallest + 500} bytes, lower --reserve"):
        make_plan(s, m, PI, PlanOptions(budget_bytes=smallest, reserve_bytes=500))
    assert make_plan(s, m, PI, PlanOptions(budget_bytes=smallest + 500, reserve_bytes=500)).weight_bytes == smallest
    with pytest.raises(BadInputError, match="reserve -1 bytes"):
        make_plan(s, m, PI, PlanOptions(reserve_bytes=-1))
    # the Pareto front is the weights' own: it starts at the smallest feasible size whatever the reserve (a build with
    # --reserve failed there: "budget ... less the 3,072 bytes --reserve keeps unspent, is below the smallest ...")
    front = pareto(s, m, PI, PlanOptions(ratio=0.4, reserve_bytes=2000), 4)
    assert front[0].weight_bytes == smallest and all(p.options.reserve_bytes == 0 for p in front)


def test_pins_exact_beats_regex_and_rules_are_recorded(scored) -> None:
    m, _, _, s = scored
    pins = (parse_pin("re:^fc1\\.=int8-tensor"), parse_pin("fc1.weight=fp16"))
    p = make_plan(s, m, PI, PlanOptions(ratio=0.5, pins=pins))
    by = {x.name: x for x in p.tensors}
    assert by["fc1.weight"].precision.name == "fp16" and "exact name" in by["fc1.weight"].rule
    assert by["fc1.bias"].precision.name == "int8-tensor" and "regex" in by["fc1.bias"].rule
    assert by["fc0.weight"].rule == "optimiser"


def test_keep_fp32_share_and_lowest_tier(scored) -> None:
    m, _, _, s = scored
    p = make_plan(s, m, PI, PlanOptions(ratio=0.6, keep_fp32_share=0.3))
    kept = [x for x in p.tensors if x.rule.startswith("fp32 share")]
    assert kept and all(x.precision.name == "fp32" for x in kept)
    assert sum(x.n_params for x in kept) >= 0.3 * sum(x.n_params for x in p.tensors)
    low = make_plan(s, m, PI, PlanOptions(ratio=0.6, lowest_bits=8))
    assert not any(x.precision.name.startswith("int4") for x in low.tensors)


def test_dead_groups_go_to_the_lowest_tier(tmp_path: Path) -> None:
    m = load_model(models.state_mlp(tmp_path / "d.onnx", dead_branch=True))
    spec = infer_spec(m)
    rec = tmp_path / "r.npy"
    np.save(rec, np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32))
    s = run_sweep(m, spec, select_contexts(read_record(rec, spec), m, spec, 4), ProbeSettings(horizon=4))
    p = make_plan(s, m, PI, PlanOptions(ratio=1.0))
    dead = {x.name: x for x in p.tensors}["dead.weight"]
    assert dead.rule == "dead group: lowest tier" and dead.precision.name.startswith("int4")


@pytest.mark.long  # prices the TFLite-converted graph (a TensorFlow conversion); the stm32h743 build in tests/bundle plans the same way
def test_mcu_target_plans_full_integer(scored) -> None:
    m, _, _, s = scored
    p = make_plan(s, m, find_target("stm32h743"), PlanOptions())
    assert p.runtime == "tflm"
    assert all(x.precision.name == "int32" for x in p.tensors if x.op == "Gemm.bias")
    assert all(x.precision.name.startswith("int8") for x in p.tensors if x.op == "Gemm")


def test_scores_of_another_model_are_refused(scored, tmp_path: Path) -> None:
    _, _, _, s = scored
    other = load_model(models.deep_mlp(tmp_path / "o.onnx", seed=3))
    with pytest.raises(BadInputError, match="sha256"):
        make_plan(s, other, PI, PlanOptions())


def test_pareto_front_and_measured_error_agree_in_rank(scored) -> None:
    from scipy.stats import spearmanr

    m, spec, ctx, s = scored
    front = pareto(s, m, PI, PlanOptions(), 8)
    assert len(front) == 8
    sizes = [p.weight_bytes for p in front]
    assert sizes == sorted(sizes)
    pred = [p.predicted_error for p in front]
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(pred))  # more bytes, never more predicted error
    meas = [measure(m, spec, ctx, simulated_weights(m, p), s.horizon).error_at_horizon for p in front]
    assert spearmanr(pred, meas).statistic > 0.8
    assert meas[-1] == 0.0


def test_plan_round_trips(scored, tmp_path: Path) -> None:
    m, _, _, s = scored
    p = make_plan(s, m, PI, PlanOptions(ratio=0.3))
    assert Plan.load(p.save(tmp_path / "plan.json")) == p


# ------------------------------------------------------------------ properties


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ratio=st.floats(0.05, 1.0),
    allocator=st.sampled_from(["exact", "greedy"]),
    objective=st.sampled_from(["gain", "paper"]),
    pin_layer=st.integers(0, 4),
    pin_prec=st.sampled_from(["fp32", "fp16", "int8-tensor", "int4-block32"]),
    regex=st.booleans(),
    share=st.sampled_from([0.0, 0.2]),
)
def test_every_plan_respects_budget_and_pins(scored, ratio, allocator, objective, pin_layer, pin_prec, regex, share) -> None:
    m, _, _, s = scored
    pin = parse_pin((f"re:^fc{pin_layer}\\.weight$" if regex else f"fc{pin_layer}.weight") + f"={pin_prec}")
    opts = PlanOptions(ratio=ratio, allocator=allocator, objective=objective, pins=(pin,), keep_fp32_share=share)
    try:
        p = make_plan(s, m, PI, opts)
    except InfeasibleBudgetError as exc:
        smallest = int(re.search(r"smallest feasible size ([\d,]+)", str(exc)).group(1).replace(",", ""))
        assert smallest > int(ratio * make_plan(s, m, PI, opts.model_copy(update={"ratio": 1.0})).fp32_bytes)
        return
    assert p.weight_bytes <= p.budget_bytes
    by = {x.name: x for x in p.tensors}
    assert by[f"fc{pin_layer}.weight"].precision.name == pin_prec and by[f"fc{pin_layer}.weight"].rule.startswith("pin")
    assert p.predicted_error is not None and math.isfinite(p.predicted_error)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ratio=st.floats(0.12, 1.0), target=st.sampled_from(["raspberrypi", "x86-64", "stm32h743"]))
def test_exact_never_worse_than_greedy_property(scored, ratio, target) -> None:
    m, _, _, s = scored
    t = find_target(target)
    try:
        e = make_plan(s, m, t, PlanOptions(ratio=ratio))
    except InfeasibleBudgetError:
        return
    g = make_plan(s, m, t, PlanOptions(ratio=ratio, allocator="greedy"))
    assert e.weight_bytes <= e.budget_bytes and g.weight_bytes <= g.budget_bytes
    assert e.predicted_error <= g.predicted_error * (1 + 1e-6) + 1e-12


def test_fp16_is_not_offered_for_values_beyond_its_range(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # y = x - mean with mean ~ 1e5 (a sea-level-pressure normaliser): fp16 would store inf
    mean = np.array([101325.0] * 4, np.float32)
    g = helper.make_graph(
        [helper.make_node("Sub", ["x", "norm.mean"], ["d"]), helper.make_node("Add", ["d", "norm.mean"], ["y"])],
        "n",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])],
        [numpy_helper.from_array(mean, "norm.mean")],
    )
    mp = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    mp.ir_version = 8
    onnx.save(mp, str(tmp_path / "n.onnx"))
    m = load_model(tmp_path / "n.onnx")
    spec = infer_spec(m)
    rec = tmp_path / "r.npy"
    np.save(rec, (101325 + np.random.default_rng(0).standard_normal((20, 4))).astype(np.float32))
    s = run_sweep(m, spec, select_contexts(read_record(rec, spec), m, spec, 3), ProbeSettings(horizon=3))
    for ratio in (0.5, 0.9):
        p = make_plan(s, m, find_target("x86-64"), PlanOptions(ratio=ratio))
        assert p.tensors[0].precision.name != "fp16" and math.isfinite(p.tensors[0].residual)


def test_ladder_gains_price_each_bit_width(scored, tmp_path: Path) -> None:
    """With --ladder the planner prices 'group at b bits' with the gain measured at b bits: a group
    whose 2-bit gain is enormous is not sent to 2 bits even when its small-perturbation gain is tiny."""

    from edgetqs.allocation.targets import load_target
    from edgetqs.sensitivity.scores import Scores

    m, spec, ctx, _ = scored
    s = run_sweep(m, spec, ctx, ProbeSettings(horizon=6, ladder=(2, 4, 8)))
    assert all(set(g.gain_by_bits) == {"2", "4", "8"} for g in s.groups)
    s.save(tmp_path / "s.json")
    assert Scores.load(tmp_path / "s.json").groups[0].gain_by_bits == s.groups[0].gain_by_bits
    (tmp_path / "t.toml").write_text(
        'name = "t"\narch = "any"\nruntimes = ["ort"]\nweight_budget_bytes = 1000000\nram_budget_bytes = 1000000\n'
        '[precisions.ort]\ndefault = ["int8-channel", "int4-channel", "int2-channel"]\n'
    )
    t = load_target(tmp_path / "t.toml")
    big = max(s.groups, key=lambda g: g.n_params)
    tiny = {g.name: g.model_copy(update={"gain": 1e-9 if g.name == big.name else 1.0}) for g in s.groups}
    trap = s.model_copy(
        update={
            "groups": tuple(
                tiny[g.name].model_copy(update={"gain_by_bits": {"2": 1e9, "4": 1e-9, "8": 1e-9}}) if g.name == big.name else tiny[g.name]
                for g in s.groups
            )
        }
    )
    budget = PlanOptions(ratio=0.2)
    plain = make_plan(
        trap.model_copy(update={"groups": tuple(g.model_copy(update={"gain_by_bits": None}) for g in trap.groups)}), m, t, budget
    )
    laddered = make_plan(trap, m, t, budget)
    prec = {x.name: x.precision.name for x in laddered.tensors}
    assert all(prec[n] != "int2-channel" for n in big.tensors)
    assert any(x.precision.name == "int2-channel" for x in plain.tensors if x.name in big.tensors)
