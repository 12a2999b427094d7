from __future__ import annotations

from pathlib import Path

import models
import numpy as np
import pytest

from edgetqs.core.contexts import read_record, select_contexts
from edgetqs.core.model import load_model
from edgetqs.core.rollout import Rollout, infer_spec
from edgetqs.errors import BadInputError, DivergedRolloutError
from edgetqs.sensitivity.groups import block_of, make_groups
from edgetqs.sensitivity.probes import probe_delta
from edgetqs.sensitivity.scores import ProbeSettings, Scores
from edgetqs.sensitivity.sweep import run_sweep


def _setup(path: Path, record: Path, k: int = 4):
    m = load_model(path)
    spec = infer_spec(m)
    ctx = select_contexts(read_record(record, spec), m, spec, k)
    return m, spec, ctx


def test_gamma_and_gain_follow_the_definition(state_model: Path, record: Path) -> None:
    m, spec, ctx = _setup(state_model, record)
    st = ProbeSettings(horizon=6, seed=5)
    scores = run_sweep(m, spec, ctx, st)
    g = next(g for g in scores.groups if g.name == "l2.weight")
    # recompute by hand: reference and perturbed rollouts, each variable over its spread in the record
    roll = Rollout(m, spec)
    ref = roll.run(ctx.arrays, 6).steps[0].astype(np.float64)
    new = probe_delta(m, ("l2.weight",), st)
    pert = roll.run(ctx.arrays, 6, overrides=new).steps[0].astype(np.float64)
    spread = np.load(record).astype(np.float64).std(axis=0)
    e = np.sqrt((((pert - ref) / spread) ** 2).mean(axis=2))  # [T, K]
    eps = np.sqrt(np.mean((new["l2.weight"].astype(np.float64) - m.weight_array("l2.weight")) ** 2))
    assert g.eps == pytest.approx(eps)
    w_rms = np.sqrt(np.mean(m.weight_array("l2.weight").astype(np.float64) ** 2))
    assert g.weight_rms == pytest.approx(w_rms)
    # gamma's initial separation is the perturbation relative to the weights (the default); the gain is per unit weight error
    assert g.gamma == pytest.approx(np.mean(np.log(e[-1] / (eps / w_rms))) / 6, rel=1e-9)
    assert g.gain == pytest.approx(np.mean(e[-1] / eps), rel=1e-9)
    assert g.gamma_curve[2] == pytest.approx(np.mean(np.log(e[2] / (eps / w_rms))) / 3, rel=1e-9)
    absolute = run_sweep(m, spec, ctx, st.model_copy(update={"eps": "absolute"}))
    ga = next(g for g in absolute.groups if g.name == "l2.weight")
    assert ga.gamma == pytest.approx(np.mean(np.log(e[-1] / eps)) / 6, rel=1e-9) and ga.gain == pytest.approx(g.gain)
    assert len(g.gamma_curve) == 6 and not g.dead and g.diverged_step is None


def test_gauss_probe_is_relative_to_each_tensor(state_model: Path) -> None:
    m = load_model(state_model)
    d = probe_delta(m, ("l1.weight",), ProbeSettings(scale=1e-3))["l1.weight"] - m.weight_array("l1.weight")
    rms_w = np.sqrt(np.mean(m.weight_array("l1.weight") ** 2))
    assert 0.7e-3 < np.sqrt(np.mean(d**2)) / rms_w < 1.3e-3


def test_weight_the_output_ignores_is_a_dead_group(tmp_path: Path, record: Path) -> None:
    m, spec, ctx = _setup(models.state_mlp(tmp_path / "d.onnx", dead_branch=True), record)
    for probe in ("gauss", "quant"):
        scores = run_sweep(m, spec, ctx, ProbeSettings(probe=probe, horizon=5))
        dead = {g.name: g for g in scores.groups}["dead.weight"]
        assert dead.dead and dead.gamma is None and dead.gain == 0.0
        assert scores.ranked()[-1].name == "dead.weight"
        assert all(not g.dead for g in scores.groups if g.name != "dead.weight")


def test_group_whose_perturbation_explodes_is_reported_with_its_step(tmp_path: Path, record: Path) -> None:
    m, spec, ctx = _setup(models.state_mlp(tmp_path / "g.onnx", gain_branch=True), record)
    scores = run_sweep(m, spec, ctx, ProbeSettings(horizon=8))
    g = {g.name: g for g in scores.groups}["gain.weight"]
    assert g.diverged_step == 1 and g.gamma is None
    assert scores.ranked()[0].name == "gain.weight"
    d = scores.to_json_dict()  # serialisable without NaN/Inf
    assert Scores.from_json_dict(d).groups == scores.groups


def test_float_rollout_that_overflows_raises_with_the_step(tmp_path: Path) -> None:
    p = models.exploding(tmp_path / "e.onnx", factor=10.0)
    rec = tmp_path / "r.npy"
    np.save(rec, np.ones((20, 4), np.float32))
    m, spec, ctx = _setup(p, rec)
    with pytest.raises(DivergedRolloutError, match=r"non-finite at step 39 of 64.*--horizon 38"):
        run_sweep(m, spec, ctx, ProbeSettings(horizon=64))
    assert run_sweep(m, spec, ctx, ProbeSettings(horizon=30)).horizon == 30


def test_deterministic_for_a_seed_and_the_same_with_workers(state_model: Path, record: Path) -> None:
    m, spec, ctx = _setup(state_model, record)
    a = run_sweep(m, spec, ctx, ProbeSettings(horizon=5, seed=1), strategy="feed")
    b = run_sweep(m, spec, ctx, ProbeSettings(horizon=5, seed=1), strategy="feed")
    c = run_sweep(m, spec, ctx, ProbeSettings(horizon=5, seed=1), workers=2, strategy="feed")
    d = run_sweep(m, spec, ctx, ProbeSettings(horizon=5, seed=2), strategy="feed")
    assert a.groups == b.groups
    assert [g.gamma for g in a.groups] == pytest.approx([g.gamma for g in c.groups], rel=1e-6)
    assert [g.gamma for g in a.groups] != [g.gamma for g in d.groups]
    assert a.forward_calls == c.forward_calls == 5 * (2 + 4)  # reference + state + 4 groups


def test_blocks_by_name_prefix(state_model: Path) -> None:
    m = load_model(state_model)
    assert make_groups(m, "block") == [("l1", ("l1.weight", "l1.bias")), ("l2", ("l2.weight", "l2.bias"))]
    assert block_of("encoder.layers.3.attn.q.weight", None) == "encoder.layers.3.attn.q"
    assert block_of("encoder.layers.3.attn.q.weight", 3) == "encoder.layers.3"
    assert block_of("onnx::MatMul_12", None) == "onnx"
    assert block_of("solo", 2) == "solo"


def test_horizon_auto_picks_a_step_and_records_the_rule(state_model: Path, record: Path) -> None:
    m, spec, ctx = _setup(state_model, record)
    s = run_sweep(m, spec, ctx, ProbeSettings(horizon=None, max_horizon=30))
    assert 4 <= s.horizon <= 30 and s.horizon_rule.startswith("auto")
    assert all(len(g.gamma_curve) == s.horizon for g in s.groups) and len(s.state_exponent.curve) == s.horizon


def test_state_exponent_of_a_contracting_model_is_negative(tmp_path: Path) -> None:
    p = models.exploding(tmp_path / "c.onnx", factor=0.5)  # x -> 0.5 x: errors halve each step
    rec = tmp_path / "r.npy"
    np.save(rec, np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32))
    m, spec, ctx = _setup(p, rec)
    s = run_sweep(m, spec, ctx, ProbeSettings(horizon=5))
    assert s.state_exponent.exponent == pytest.approx(np.log(0.5), abs=1e-3)


def test_scores_round_trip_and_schema_check(state_model: Path, record: Path, tmp_path: Path) -> None:
    m, spec, ctx = _setup(state_model, record)
    s = run_sweep(m, spec, ctx, ProbeSettings(horizon=4, probe="quant"))
    p = s.save(tmp_path / "scores.json")
    assert Scores.load(p) == s
    bad = tmp_path / "old.json"
    bad.write_text(p.read_text().replace('"schema_version": 2', '"schema_version": 99'))
    with pytest.raises(BadInputError, match="schema_version 99"):
        Scores.load(bad)


@pytest.mark.parametrize("kw", [dict(horizon=0), dict(horizon=-3), dict(probe="laplace"), dict(bits=1), dict(scale=0.0)])
def test_bad_settings(kw) -> None:
    with pytest.raises(BadInputError):
        ProbeSettings(**kw).check()


@pytest.mark.parametrize("strategy", ["feed", "rebuild"])
def test_strategies_agree_and_both_find_dead_groups(strategy: str, tmp_path: Path, record: Path) -> None:
    m, spec, ctx = _setup(models.state_mlp(tmp_path / "d.onnx", dead_branch=True), record)
    s = run_sweep(m, spec, ctx, ProbeSettings(horizon=5), strategy=strategy)
    ref = run_sweep(m, spec, ctx, ProbeSettings(horizon=5), strategy="feed")
    assert s.strategy == strategy
    assert {g.name for g in s.groups if g.dead} == {"dead.weight"}
    live = [g.name for g in ref.groups if not g.dead]
    got, want = {g.name: g.gamma for g in s.groups}, {g.name: g.gamma for g in ref.groups}
    assert [got[n] for n in live] == pytest.approx([want[n] for n in live], rel=1e-4)


def test_auto_strategy_is_recorded(state_model: Path, record: Path) -> None:
    m, spec, ctx = _setup(state_model, record)
    s = run_sweep(m, spec, ctx, ProbeSettings(horizon=3))
    assert s.strategy in ("feed", "rebuild")
    with pytest.raises(BadInputError, match="strategy"):
        run_sweep(m, spec, ctx, ProbeSettings(horizon=3), strategy="magic")


def test_exactly_representable_group_falls_back_to_gauss_not_dead(tmp_path: Path, record: Path) -> None:
    import onnx
    from onnx import numpy_helper

    p = models.state_mlp(tmp_path / "m.onnx")
    proto = onnx.load(str(p))
    for init in proto.graph.initializer:
        if init.name == "l2.bias":  # values on the 4-bit grid: the quant residual is exactly zero
            init.CopyFrom(numpy_helper.from_array(np.full(8, 0.7, np.float32), "l2.bias"))
    onnx.save(proto, str(p))
    m, spec, ctx = _setup(p, record)
    s = run_sweep(m, spec, ctx, ProbeSettings(horizon=4, probe="quant"))
    g = {g.name: g for g in s.groups}["l2.bias"]
    assert not g.dead and g.probe == "gauss" and g.gamma is not None and g.eps > 0
    assert {g.name: g for g in s.groups}["l2.weight"].probe == "quant"


def test_quantizing_a_normaliser_to_zero_is_reported_as_divergence(tmp_path: Path, record: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # y = x / std with std = [1000, 1, ...]: 4-bit per-tensor RTN sends the small entries to 0
    std = np.array([1000.0] + [1.0] * 7, np.float32)
    g = helper.make_graph(
        [helper.make_node("Div", ["x", "norm.std"], ["y"])],
        "n",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 8])],
        [numpy_helper.from_array(std, "norm.std")],
    )
    mp = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    mp.ir_version = 8
    onnx.save(mp, str(tmp_path / "n.onnx"))
    m, spec, ctx = _setup(tmp_path / "n.onnx", record)
    s = run_sweep(m, spec, ctx, ProbeSettings(horizon=3, probe="quant"))
    assert s.groups[0].diverged_step == 1 and s.groups[0].gamma is None


def test_a_ladder_assembled_from_separate_sweeps_equals_the_ladder_sweep(state_model: Path, record: Path) -> None:
    """`with_ladder` on the main sweep and separately run quant sweeps (as the benchmark does from the score cache,
    without a second main sweep) gives exactly what ``ladder=`` computes in one go."""
    from edgetqs.sensitivity.sweep import ladder_settings, with_ladder

    m, spec, ctx = _setup(state_model, record)
    st = ProbeSettings(horizon=5, seed=2)
    whole = run_sweep(m, spec, ctx, st.model_copy(update={"ladder": (3, 6)}))
    main = run_sweep(m, spec, ctx, st)
    parts = with_ladder(main, {b: run_sweep(m, spec, ctx, ladder_settings(st, b, main.horizon)) for b in (6, 3)})
    assert [g.gain_by_bits for g in parts.groups] == [g.gain_by_bits for g in whole.groups]
    assert all(set(g.gain_by_bits or {}) == {"3", "6"} for g in parts.groups)
    assert [g.gain for g in parts.groups] == [g.gain for g in whole.groups]
    assert parts.settings.ladder == (3, 6) and parts.forward_calls > main.forward_calls  # calls differ: each sweep times its strategy
    with pytest.raises(BadInputError, match="does not match the main sweep"):
        with_ladder(main, {4: run_sweep(m, spec, ctx, ladder_settings(st, 4, main.horizon - 1))})
