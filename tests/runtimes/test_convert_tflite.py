"""TFLite artifacts with the real onnx2tf, ai-edge-quantizer and LiteRT interpreter (slow tier: CI runs it)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import models
import numpy as np
import pytest

from edgetqs.allocation.knapsack import InfeasibleBudgetError
from edgetqs.allocation.plan import PlanOptions, make_plan, parse_pin
from edgetqs.allocation.targets import find_target
from edgetqs.core.contexts import read_record, select_contexts
from edgetqs.core.inputs import resolve
from edgetqs.core.model import load_model
from edgetqs.core.project import load_project
from edgetqs.core.rollout import infer_spec
from edgetqs.errors import OptionalDependencyError
from edgetqs.examples import example_path
from edgetqs.runtimes.convert import ConvertError, convert
from edgetqs.sensitivity.scores import ProbeSettings
from edgetqs.sensitivity.sweep import run_sweep

pytestmark = [pytest.mark.slow, pytest.mark.tflite]
PI = find_target("raspberrypi")


def _deep(tmp_path: Path):
    m = load_model(models.deep_mlp(tmp_path / "d.onnx"))
    spec = infer_spec(m)
    rec = tmp_path / "r.npy"
    np.save(rec, np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32))
    ctx = select_contexts(read_record(rec, spec), m, spec, 3)
    return m, spec, ctx, run_sweep(m, spec, ctx, ProbeSettings(horizon=5))


def test_tflite_weight_only_mixed_reads_back_from_the_flatbuffer(tmp_path: Path) -> None:
    m, spec, ctx, s = _deep(tmp_path)
    pins = tuple(parse_pin(p) for p in ("fc0.weight=int4-channel", "fc1.weight=int8-tensor", "fc2.weight=fp16", "fc3.weight=int8-channel"))
    plan = make_plan(s, m, PI, PlanOptions(runtime="tflite", ratio=1.0, pins=pins))
    before = hashlib.sha256(m.path.read_bytes()).hexdigest()
    r = convert(m, plan, "tflite", tmp_path / "out", ctx, spec)
    found = {t.name: t.found for t in r.tensors}
    # INT4 is reported as int8 by the interpreter: this comes from the flatbuffer's tensor type
    assert found["fc0.weight"] == "int4-channel" and found["fc1.weight"] == "int8-tensor"
    assert found["fc2.weight"] == "fp16" and found["fc3.weight"] == "int8-channel" and r.all_match
    assert r.artifact_vs_simulated < 1e-3  # ai-edge-quantizer rounds like our quantizer, to float error
    assert r.weight_bytes == plan.weight_bytes  # priced from the float graph onnx2tf writes
    assert r.error_by_lead[-1] == pytest.approx(r.simulated_error_by_lead[-1], rel=0.05, abs=1e-6)
    assert hashlib.sha256(m.path.read_bytes()).hexdigest() == before  # onnx2tf got a copy, not our file
    assert "onnx2tf" in r.versions and "ai-edge-quantizer" in r.versions


def test_nchw_conv_model_runs_through_nhwc_transposes() -> None:
    proj = load_project(example_path("blizzard") / "edgetqs.toml")
    inp = resolve(None, proj, k=2)
    s = run_sweep(inp.model, inp.spec, inp.contexts, ProbeSettings(horizon=3))
    plan = make_plan(s, inp.model, PI, PlanOptions(runtime="tflite", ratio=0.4))
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        r = convert(inp.model, plan, "tflite", Path(d) / "out", inp.contexts, inp.spec, horizon=3)
    assert r.all_match and r.artifact_vs_simulated < 1e-3


def test_fused_op_is_legalised_and_an_op_without_a_rewrite_is_named(tmp_path: Path) -> None:
    import onnx

    path = models.fused_mlp(tmp_path / "f.onnx")
    m = load_model(path)
    spec = infer_spec(m)
    rec = tmp_path / "r.npy"
    np.save(rec, np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32))
    ctx = select_contexts(read_record(rec, spec), m, spec, 2)
    s = run_sweep(m, spec, ctx, ProbeSettings(horizon=3))  # onnxruntime runs the fused op: TQS works on it
    plan = make_plan(s, m, PI, PlanOptions(runtime="tflite", ratio=1.0))
    # onnx2tf has no converter for com.microsoft.FusedMatMul: legalised into MatMul (and Mul), recorded
    r = convert(m, plan, "tflite", tmp_path / "ok", ctx, spec, horizon=3)
    assert {w["rule"] for w in r.facts["prepared"]["rewrites"]} == {"fusedmatmul_matmul"} and r.all_match
    # com.microsoft.Gelu has no rewrite: named with why, nothing left behind
    proto = onnx.load(str(path))
    proto.graph.node[1].op_type, proto.graph.node[1].domain = "Gelu", "com.microsoft"
    onnx.save(proto, str(tmp_path / "g.onnx"))
    g = load_model(tmp_path / "g.onnx")
    sg = run_sweep(g, spec, ctx, ProbeSettings(horizon=3))
    plan_g = make_plan(sg, g, PI, PlanOptions(runtime="tflite", ratio=1.0))
    out = tmp_path / "out"
    with pytest.raises(ConvertError, match=r"Gelu.*no rewrite"):
        convert(g, plan_g, "tflite", out, ctx, spec, horizon=3)
    assert not out.exists() and not list(tmp_path.glob(".edgetqs-convert-*"))


def test_one_channel_conv1d_with_a_symbolic_batch_converts(tmp_path: Path) -> None:
    # regression: onnx2tf misread Lorenz-96's [B, 1, 44] Conv1d input while the batch was symbolic
    proj = load_project(example_path("lorenz96") / "edgetqs.toml")
    inp = resolve(None, proj, k=2)
    s = run_sweep(inp.model, inp.spec, inp.contexts, ProbeSettings(horizon=3))
    plan = make_plan(s, inp.model, PI, PlanOptions(runtime="tflite", ratio=0.5))
    r = convert(inp.model, plan, "tflite", tmp_path / "out", inp.contexts, inp.spec, horizon=3)
    assert r.all_match and r.artifact_vs_simulated < 1e-3


def test_missing_extra_names_it(tmp_path: Path, monkeypatch) -> None:
    m, spec, ctx, s = _deep(tmp_path)
    plan = make_plan(s, m, PI, PlanOptions(runtime="tflite", ratio=0.5))
    monkeypatch.setitem(sys.modules, "onnx2tf", None)  # import fails as when the package is absent
    with pytest.raises(OptionalDependencyError, match=r"edgetqs\[tflite\]"):
        convert(m, plan, "tflite", tmp_path / "out", ctx, spec)


def test_dynamic_range_activations_where_tqs_allows(tmp_path: Path) -> None:
    """--activations dynamic: the int8 weights' FULLY_CONNECTED ops run dynamic range (the weight stays int8 in the
    flatbuffer with no DEQUANTIZE, the op quantizes its input per call), on every op with an infinite goal and on the
    ops the TQS choice keeps within the goal otherwise (recorded in convert.json); int4 weights stay weight-only."""
    import math

    from edgetqs.runtimes.litert import names, op_name, schema

    m, spec, ctx, s = _deep(tmp_path)
    pins = tuple(parse_pin(p) for p in ("fc0.weight=int4-channel", "re:fc[1-4].weight=int8-channel"))
    plan = make_plan(s, m, PI, PlanOptions(runtime="tflite", ratio=1.0, pins=pins, activations="dynamic"))
    assert plan.activations == "dynamic"
    every = convert(m, plan, "tflite", tmp_path / "all", ctx, spec, activation_goal=math.inf)
    assert every.activations == "dynamic" and every.all_match
    assert every.facts["dynamic_weights"] == ["fc1.weight", "fc2.weight", "fc3.weight", "fc4.weight"]
    fb = schema()
    ops, types = names(fb)
    fm = fb.ModelT.InitFromPackedBuf((tmp_path / "all" / every.artifact).read_bytes(), 0)
    sg = fm.subgraphs[0]
    dequantized = {o for op in sg.operators if op_name(fm, op, ops) == "DEQUANTIZE" for o in op.outputs}
    fc_weights = [sg.tensors[op.inputs[1]] for op in sg.operators if op_name(fm, op, ops) == "FULLY_CONNECTED"]
    # four int8 weights read directly by their FULLY_CONNECTED (dynamic range), the int4 one behind a DEQUANTIZE
    assert sum(types[t.type] == "INT8" for t in fc_weights) == 4 and len(dequantized) == 1
    assert every.error_by_lead[-1] < 0.1
    chosen = convert(m, plan, "tflite", tmp_path / "tqs", ctx, spec)
    choice = chosen.facts["activation_choice"]
    assert set(choice["modes"]) == {"h1", "h2", "h3", "h4"} and set(choice["modes"].values()) <= {"dynamic", "float"}
    assert sorted(chosen.facts["dynamic_weights"]) == sorted(f"fc{op[1]}.weight" for op, md in choice["modes"].items() if md == "dynamic")
    with pytest.raises(Exception, match="offers float, dynamic, int8, int16 for tflite"):
        convert(m, plan, "tflite", tmp_path / "i4", ctx, spec, activations="int4")


def _io_types(path: Path, op: str = "FULLY_CONNECTED") -> tuple[str, list[str]]:
    """(the first input's tensor type, the input types of the ``op`` ops) of a TFLite file."""
    from edgetqs.runtimes.litert import names, op_name, schema

    fb = schema()
    ops, types = names(fb)
    fm = fb.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    sg = fm.subgraphs[0]
    fc = [types[sg.tensors[o.inputs[0]].type] for o in sg.operators if op_name(fm, o, ops) == op]
    return types[sg.tensors[sg.inputs[0]].type], fc


def test_static_activations_int8_kernels_and_int16_full_integer(tmp_path: Path) -> None:
    """--activations int8 on LiteRT: static int8 kernels (each int8 FULLY_CONNECTED reads int8, the input and the ops
    between stay float); int16: a full-integer int16x8 graph (integer inputs). A kernel planned fp16 computes in float
    in both. The TQS ladder (int8 -> dynamic -> float; int16 -> float) records every op's rung, and with every kernel
    float the artifact is the weight-only one. Plans bound the file; GPTQ integers are written with the integer
    kernels' biases requantized; the check finds the inputs through the signature."""
    import math

    from edgetqs import api
    from edgetqs.allocation.planner import plan_stage

    m, spec, ctx, s = _deep(tmp_path)
    pins = tuple(parse_pin(p) for p in ("fc0.weight=fp16", "re:fc[1-4].weight=int8-channel"))
    got, plans = {}, {}
    for act, first_type in (("int8", "FLOAT32"), ("int16", "INT16")):
        plan = plan_stage(
            s, m, PI, PlanOptions(runtime="tflite", ratio=1.0, pins=pins, rounding="gptq", activations=act), spec=spec, contexts=ctx
        )
        assert plan.activations == act and plan.pricing["exact"]
        plans[act] = plan
        r = convert(m, plan, "tflite", tmp_path / act, ctx, spec, activation_goal=math.inf)
        assert r.all_match and r.activations == act and r.facts["float_weights"] == ["fc0.weight"] and r.facts["dynamic_weights"] == []
        first, fc = _io_types(tmp_path / act / r.artifact)
        # fc0 reads float (the input, or its DEQUANTIZE's output); the four int8 kernels read integer activations
        assert first == first_type and fc.count(act.upper()) == 4 and fc.count("FLOAT32") == 1, (first, fc)
        # int8: each int8 kernel hands its int8 output to its Tanh (the int8-act rung); fc0's Tanh reads float
        tanh = _io_types(tmp_path / act / r.artifact, "TANH")[1]
        assert tanh == (["FLOAT32"] + ["INT8"] * 4 if act == "int8" else ["INT16"] * 5), tanh
        assert r.facts["integer_activations"] == ({f"fc{i}.weight": "TANH" for i in range(1, 5)} if act == "int8" else {})
        assert 0 < r.weight_bytes <= plan.weight_bytes
        assert r.error_by_lead[-1] is not None and r.error_by_lead[-1] < 0.5
        got[act] = (r.error_by_lead[-1], r.artifact)
    assert got["int16"][0] < got["int8"][0]  # 256 times finer activations
    # the TQS choice: every op's rung recorded; an unreachable goal leaves the weight-only artifact
    for act, rungs in (("int8", {"int8-act", "int8", "dynamic", "float"}), ("int16", {"int16", "float"})):
        chosen = convert(m, plans[act], "tflite", tmp_path / f"tqs{act}", ctx, spec)
        modes = chosen.facts["activation_choice"]["modes"]
        assert set(modes) == {"h1", "h2", "h3", "h4"} and set(modes.values()) <= rungs and chosen.all_match
        assert sorted(chosen.facts["dynamic_weights"]) == sorted(f"fc{op[1]}.weight" for op, md in modes.items() if md == "dynamic")
    none = convert(m, plans["int16"], "tflite", tmp_path / "none", ctx, spec, activation_goal=1e-12)
    assert none.activations == "float" and none.all_match and none.weight_bytes <= plans["int16"].weight_bytes  # the plan bounds it
    assert _io_types(tmp_path / "none" / none.artifact)[0] == "FLOAT32"
    assert none.artifact_vs_simulated is not None and none.artifact_vs_simulated < 1e-4  # the plan's GPTQ weights alone
    # the check on the host finds the inputs through the file's signature and quantizes them
    rec = tmp_path / "r.npy"
    c = api.check(tmp_path / "int16" / got["int16"][1], model=m.path, contexts=rec, k=3, horizon=5, tolerance=0.5)
    assert c.passed, c.verdict


def _act_plan(tmp_path: Path, act: str):
    """deep_mlp with ``act`` between its layers (the last stays Tanh), fc0 fp16 and fc1-fc4 int8: model, spec,
    contexts and the int8-activation LiteRT plan."""
    import onnx

    from edgetqs.allocation.planner import plan_stage

    path = models.deep_mlp(tmp_path / "d.onnx", act="Gelu" if act == "Gelu" else "Tanh")
    if act not in ("Gelu", "Tanh"):
        proto = onnx.load(path)
        for n in proto.graph.node:
            if n.op_type == "Tanh" and n.output[0] != "a4":
                n.op_type = act
        onnx.save(proto, path)
    m = load_model(path)
    spec = infer_spec(m)
    rec = tmp_path / "r.npy"
    np.save(rec, np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32))
    ctx = select_contexts(read_record(rec, spec), m, spec, 3)
    s = run_sweep(m, spec, ctx, ProbeSettings(horizon=5))
    pins = tuple(parse_pin(p) for p in ("fc0.weight=fp16", "re:fc[1-4].weight=int8-channel"))
    plan = plan_stage(s, m, PI, PlanOptions(runtime="tflite", ratio=1.0, pins=pins, activations="int8"), spec=spec, contexts=ctx)
    return m, spec, ctx, plan


@pytest.mark.parametrize("act", ["Sigmoid", "Gelu", "HardSwish"])
def test_int8_kernels_hand_their_output_to_the_activation_in_int8(tmp_path: Path, act: str) -> None:
    """The int8-act rung for each activation LiteRT runs in int8 after a kernel: with every op at its narrowest rung,
    each int8 FULLY_CONNECTED's activation reads its int8 output, the fp16 kernel's reads float, and convert.json
    names them."""
    import math

    m, spec, ctx, plan = _act_plan(tmp_path, act)
    r = convert(m, plan, "tflite", tmp_path / "a", ctx, spec, activation_goal=math.inf)
    builtin = {"Sigmoid": "LOGISTIC", "Gelu": "GELU", "HardSwish": "HARD_SWISH"}[act]
    assert r.all_match and r.facts["integer_activations"] == {
        **{f"fc{i}.weight": builtin for i in (1, 2, 3)},
        "fc4.weight": "TANH",
    }
    assert _io_types(tmp_path / "a" / r.artifact, builtin)[1] == ["FLOAT32", "INT8", "INT8", "INT8"]
    assert r.error_by_lead[-1] is not None and r.error_by_lead[-1] < 0.05


def test_an_integer_activation_that_cannot_be_made_leaves_the_kernels_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the quantizer refuses the activations after the int8 kernels, convert still writes the static int8
    kernels, with every activation float, offers no int8-act rung, and says why."""
    import math

    from edgetqs.runtimes import tflm

    real = tflm.quantize_static

    def refuse(*args, **kwargs):
        if kwargs.get("activations") or (len(args) > 11 and args[11]):
            raise ConvertError("ai-edge-quantizer cannot quantize this graph: TANH refused")
        return real(*args, **kwargs)

    monkeypatch.setattr(tflm, "quantize_static", refuse)
    m, spec, ctx, plan = _act_plan(tmp_path, "Tanh")
    r = convert(m, plan, "tflite", tmp_path / "a", ctx, spec, activation_goal=math.inf)
    assert r.all_match and r.activations == "int8" and r.facts["integer_activations"] == {}
    assert set(r.facts["activation_choice"]["modes"].values()) == {"int8"}
    assert any(
        "stay float: an int8 one could not be made (ai-edge-quantizer cannot quantize this graph: TANH refused)" in n for n in r.notes
    )
    assert _io_types(tmp_path / "a" / r.artifact, "TANH")[1] == ["FLOAT32"] * 5


def _gptq_stored(artifact: Path, m, plan, ctx, spec) -> tuple[int, int]:
    """(weights whose stored values are GPTQ's, weights where GPTQ's integers differ from round-to-nearest's): every
    int weight's stored values (integers x scales, read from the flatbuffer) compared with GPTQ's as multisets."""
    from edgetqs.allocation.rounding import Rounder
    from edgetqs.core.quantize import quantize_int
    from edgetqs.runtimes.litert import names, schema
    from edgetqs.runtimes.tflite_integers import stored_values

    fb = schema()
    _, types = names(fb)
    fm = fb.ModelT.InitFromPackedBuf(artifact.read_bytes(), 0)
    sg = fm.subgraphs[0]
    stored = [np.sort(stored_values(fm, i, types).ravel()) for i, t in enumerate(sg.tensors) if types[t.type] in ("INT8", "INT4")]
    rounder, same, differs = Rounder(m, "gptq", ctx, spec, plan.horizon), 0, 0
    for t in plan.tensors:
        if t.precision.kind != "int":
            continue
        want = rounder.integers(t.name, t.precision)
        key = np.sort(want.dequantize().ravel())
        same += any(v.shape == key.shape and np.allclose(v, key, rtol=1e-6, atol=0) for v in stored)
        differs += int((want.q != quantize_int(m.weight_array(t.name), t.precision, m.layout(t.name)).q).any())
    return same, differs


def test_gptq_plans_store_the_gptq_integers_in_tflite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPTQ plan converted to TFLite: ai-edge-quantizer lays the weights out, then the plan's integers and scales
    replace its round-to-nearest ones (int4 and int8, per channel and per tensor, weight-only and dynamic range).
    Read back, they are GPTQ's; the host rollout equals the plan's simulated quantization."""
    import math

    from edgetqs.allocation.planner import plan_stage

    m, spec, ctx, s = _deep(tmp_path)
    pins = tuple(parse_pin(p) for p in ("fc0.weight=int4-channel", "fc1.weight=int8-tensor", "re:fc[2-4].weight=int8-channel"))
    plan = plan_stage(
        s, m, PI, PlanOptions(runtime="tflite", ratio=1.0, pins=pins, rounding="gptq", activations="dynamic"), spec=spec, contexts=ctx
    )
    r = convert(m, plan, "tflite", tmp_path / "w", ctx, spec, activations="float")
    assert r.all_match and r.facts["rounding"] == "gptq"
    assert r.artifact_vs_simulated is not None and r.artifact_vs_simulated < 1e-4  # GPTQ's values, to float rounding
    same, differs = _gptq_stored(tmp_path / "w" / r.artifact, m, plan, ctx, spec)
    assert same == 5 and differs >= 1
    dyn = convert(m, plan, "tflite", tmp_path / "d", ctx, spec, activation_goal=math.inf)
    assert dyn.all_match and len(dyn.facts["dynamic_weights"]) == 4
    assert _gptq_stored(tmp_path / "d" / dyn.artifact, m, plan, ctx, spec)[0] == 5
    # the read-back is what proves it: left with the quantizer's round-to-nearest integers, the tensors GPTQ moved fail
    from edgetqs.runtimes import tflite_integers

    monkeypatch.setattr(tflite_integers, "write_plan_integers", lambda buf, *a: buf)
    with pytest.raises(
        ConvertError, match=r"'fc\d.weight' planned int\d-\w+, stored int\d-\w+ \(integers differ from the plan's gptq rounding\)"
    ):
        convert(m, plan, "tflite", tmp_path / "r", ctx, spec, activations="float")


def test_gptq_conv_weights_follow_the_nhwc_layout(tmp_path: Path) -> None:
    """A Conv weight [O, I, kh, kw] is stored [O, kh, kw, I] by onnx2tf: GPTQ's integers are carried over by the
    transpose, per output channel (the quantized dimension), and read back as GPTQ's."""
    from edgetqs.allocation.planner import plan_stage

    path = models.static_conv(tmp_path / "c.onnx", channels=4, size=6)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "c.npz", record=rng.standard_normal((20, 4, 6, 6)).astype(np.float32), mask=np.ones((1, 6, 6), np.float32))
    from edgetqs.core.rollout import SpecHints

    m = load_model(path)
    spec = infer_spec(m, SpecHints(static=("mask",)))
    ctx = select_contexts(read_record(tmp_path / "c.npz", spec), m, spec, 3)
    s = run_sweep(m, spec, ctx, ProbeSettings(horizon=4))
    pins = (parse_pin("conv.weight=int4-channel"),)
    plan = plan_stage(s, m, PI, PlanOptions(runtime="tflite", ratio=1.0, pins=pins, rounding="gptq"), spec=spec, contexts=ctx)
    r = convert(m, plan, "tflite", tmp_path / "o", ctx, spec)
    assert r.all_match and r.artifact_vs_simulated is not None and r.artifact_vs_simulated < 1e-4
    assert _gptq_stored(tmp_path / "o" / r.artifact, m, plan, ctx, spec)[0] == 1


def test_tflite_plans_price_the_constants_onnx2tf_adds(tmp_path: Path) -> None:
    """Lorenz-96's Conv1d graph gains constants in onnx2tf (shape and permutation vectors: 104 B where the ONNX graph
    has 52 B). The plan prices the float TFLite graph onnx2tf writes (cached; convert quantizes the same graph), so
    the plan's bytes are the file's, at 1.0 of fp32 (where the ONNX estimate made the artifact 52 B over budget) and at
    0.3."""
    from edgetqs.runtimes.prepare import prepared_fixed_bytes

    proj = load_project(example_path("lorenz96") / "edgetqs.toml")
    inp = resolve(None, proj, k=2)
    s = run_sweep(inp.model, inp.spec, inp.contexts, ProbeSettings(horizon=3))
    for ratio in (1.0, 0.3):
        plan = make_plan(s, inp.model, PI, PlanOptions(runtime="tflite", ratio=ratio))
        assert plan.pricing["exact"] and plan.fixed_bytes > prepared_fixed_bytes(inp.model, "tflite")
        r = convert(inp.model, plan, "tflite", tmp_path / f"r{ratio}", inp.contexts, inp.spec)
        assert r.weight_bytes == plan.weight_bytes <= plan.budget_bytes


def test_tflite_pricing_falls_back_to_the_onnx_estimate_when_onnx2tf_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnx2tf failing at plan time (an op it lacks, a timeout) does not stop the plan: the fixed bytes are the
    legalised ONNX graph's, the pricing says it is not exact and why; convert then names the cause."""
    import subprocess

    from edgetqs.runtimes import litert
    from edgetqs.runtimes.base import RUNTIMES
    from edgetqs.runtimes.prepare import prepared_fixed_bytes

    m = load_model(models.deep_mlp(tmp_path / "d.onnx"))

    def boom(*a, **k):
        raise subprocess.TimeoutExpired("onnx2tf", 600)

    monkeypatch.setenv("EDGETQS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(litert, "float_tflite", boom)
    p = RUNTIMES.get("tflite").pricing(m, "float", exact=True)
    assert not p.exact and p.fixed == prepared_fixed_bytes(m, "tflite")
    assert any("estimated from the ONNX graph" in n and "onnx2tf" in n for n in p.notes)


def test_gptq_gru_gate_pieces_and_the_float_cell_are_exact(tmp_path: Path) -> None:
    """A torch GRU forecaster (unrolled for TFLite, W and R split per gate): a GPTQ plan's integers are written into
    each gate piece by value, and the artifact's rollout equals the plan's simulated quantization. Before the unroll
    took out[:, -1] from the last h, onnx2tf's float graph fed the head zeros: 0.079 from the simulation at fp32."""
    import realmodels

    from edgetqs.allocation.planner import plan_stage

    m = load_model(realmodels.gru_onestep(tmp_path / "g.onnx", L=8, C=3, hidden=8))
    spec = infer_spec(m)
    np.save(tmp_path / "r.npy", np.random.default_rng(0).standard_normal((80, 3)).astype(np.float32))
    ctx = select_contexts(read_record(tmp_path / "r.npy", spec), m, spec, 3)
    s = run_sweep(m, spec, ctx, ProbeSettings(horizon=4))
    pins = (parse_pin("re:GRU_11[23]$=int8-channel"), parse_pin("head.weight=int8-channel"))
    plan = plan_stage(s, m, PI, PlanOptions(runtime="tflite", ratio=1.0, pins=pins, rounding="gptq"), spec=spec, contexts=ctx)
    r = convert(m, plan, "tflite", tmp_path / "o", ctx, spec)
    assert r.all_match and sum("gate pieces" in t.found for t in r.tensors) == 2
    assert r.artifact_vs_simulated is not None and r.artifact_vs_simulated < 1e-5


def test_int16_gather_is_refused_for_tflite_micro_only(tmp_path: Path) -> None:
    """tflite-micro has no int16 GATHER, LiteRT has: full-integer int16 pricing refuses it for tflm only (an unrolled
    GRU's gathers made `--format tflite --activations int16` fail with tflite-micro's reason)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgetqs.runtimes import RUNTIMES

    w = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["x", "idx"], ["g"], axis=1), helper.make_node("MatMul", ["g", "w.weight"], ["y"])],
        "permute",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 8])],
        [numpy_helper.from_array(np.array([0, 2, 4, 6, 1, 3, 5, 7], np.int64), "idx"), numpy_helper.from_array(w, "w.weight")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "g.onnx")
    m = load_model(tmp_path / "g.onnx")
    p = RUNTIMES.get("tflite").pricing(m, "int16", exact=True)
    assert p.exact and p.float_kernels and not p.notes
    with pytest.raises(ConvertError, match="tflite-micro's GATHER has no int16 kernel"):
        RUNTIMES.get("tflm").pricing(m, "int16", exact=True)


def test_full_integer_litert_pricing_bounds_float_constants() -> None:
    """LiteRT full-integer plans price a bias or an elementwise constant at the larger of its integer and float32
    forms (it stays float beside a float kernel, and in the weight-only fallback); TFLite-Micro's stay exact."""
    from edgetqs.core.quantize import Layout, Precision, Storage
    from edgetqs.runtimes.pricing import QPARAM_BYTES, Pricing, Slot

    slots = {"b": [Slot("bias", 100)], "c": [Slot("const", 100)]}
    fp32, lay = Precision("float", 32), Layout(0, 1)
    for acts, width, wide in (("int8", 1, 4), ("int16", 2, 8)):
        exact = Pricing("tflm", acts, Storage(), exact=True, source="", slots=slots)
        bound = Pricing("tflite", acts, Storage(), exact=True, source="", slots=slots, float_kernels=True)
        assert exact.own_bytes("b", (100,), fp32, lay) == wide * 100 + QPARAM_BYTES
        assert exact.own_bytes("c", (100,), fp32, lay) == width * 100 + QPARAM_BYTES
        assert bound.own_bytes("b", (100,), fp32, lay) == max(wide * 100 + QPARAM_BYTES, 400)
        assert bound.own_bytes("c", (100,), fp32, lay) == 400  # float32 is the larger: 100 x 4


def test_int16_state_beyond_the_calibrated_rollouts_is_not_clipped(tmp_path: Path) -> None:
    """A full-integer int16 graph carries the state itself in int16: calibrated on the conversion's rollouts alone, a
    forced AR(1) state beyond them was clipped and the check failed (0.113 at lead 8 against 5e-5 on the conversion's
    contexts). The ranges are widened x4 (`INT16_MARGIN`): the build passes; the inputs come through the signature in
    the model's order (x, then the time-of-day forcing)."""
    import json

    from edgetqs import api

    models.forced_state(tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal(200)
    times = np.datetime64("2024-01-01T00:00") + np.arange(200) * np.timedelta64(1, "h")
    (tmp_path / "r.csv").write_text("time,x\n" + "".join(f"{t},{v:.6f}\n" for t, v in zip(times.astype(str), x)))
    (tmp_path / "edgetqs.toml").write_text('model = "m.onnx"\ncontexts = "r.csv"\nk = 4\n\n[rollout]\nforcing = ["tod=hour_of_day"]\n')
    r = api.build(
        None,
        "raspberrypi",
        project=tmp_path / "edgetqs.toml",
        fmt="tflite",
        activations="int16",
        ratio=1.0,
        device="local",
        output=tmp_path / "dist",
    )
    bundle = next(p for p in (tmp_path / "dist").iterdir() if p.is_dir())
    facts = json.loads((bundle / "convert.json").read_text())["facts"]
    assert facts["tflite_inputs"] == {"x": 0, "tod": 1}
    assert r.passed, r.verdict


def test_dynamic_range_centres_a_window_of_variables_at_different_levels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dense layer over a flattened window of variables at different levels: quantized per call, the levels take the
    range and the rollout drifts (0.36); centred on the window's last step it passes (0.02). The ladder offers it as a
    rung between dynamic and float when the budget has room for the level weight, and says which budget would offer
    it when not; that advice, followed, offers it."""
    import math
    import re

    from edgetqs.runtimes.litert import names, op_name, schema

    m = load_model(models.level_window(tmp_path / "m.onnx"))
    spec = infer_spec(m)
    walk = np.cumsum(0.05 * np.random.default_rng(0).standard_normal((300, 4)), axis=0)
    rec = tmp_path / "r.npy"
    np.save(rec, (np.array([0.0, 8.0, -5.0, 15.0]) + walk).astype(np.float32))
    ctx = select_contexts(read_record(rec, spec), m, spec, 4)
    s = run_sweep(m, spec, ctx, ProbeSettings(horizon=5))
    pins = (parse_pin("re:.*=int8-channel"),)
    size = make_plan(s, m, PI, PlanOptions(runtime="tflite", ratio=1.0, pins=pins, activations="dynamic")).weight_bytes
    tight = make_plan(s, m, PI, PlanOptions(runtime="tflite", budget_bytes=size, pins=pins, activations="dynamic"))  # no room
    every = convert(m, tight, "tflite", tmp_path / "every", ctx, spec, activation_goal=math.inf)
    assert every.error_by_lead[-1] > 0.1 and "centred" not in every.facts  # plain dynamic range: the levels take the range
    chosen = convert(m, tight, "tflite", tmp_path / "tight", ctx, spec)
    assert "centred" not in chosen.facts and "centred" not in chosen.facts["activation_choice"]["modes"].values()
    advice = next(n for n in chosen.notes if "read(s) a flattened window" in n)
    reserve = int(re.search(r"--reserve (\d+)", advice).group(1))  # type: ignore[union-attr]
    budget = int(re.search(r"--budget (\d+)", advice).group(1))  # type: ignore[union-attr]
    # every weight pinned at its smallest: --reserve at the same budget is infeasible, and says the budget to raise to
    with pytest.raises(InfeasibleBudgetError, match=f"raise the budget to at least {budget} bytes, lower --reserve"):
        make_plan(s, m, PI, PlanOptions(runtime="tflite", budget_bytes=size, reserve_bytes=reserve, pins=pins, activations="dynamic"))
    kept = make_plan(s, m, PI, PlanOptions(runtime="tflite", budget_bytes=budget, reserve_bytes=reserve, pins=pins, activations="dynamic"))
    assert kept.budget_bytes == budget and kept.weight_bytes <= budget - reserve
    roomy = make_plan(s, m, PI, PlanOptions(runtime="tflite", budget_bytes=budget, pins=pins, activations="dynamic"))
    r = convert(m, roomy, "tflite", tmp_path / "roomy", ctx, spec)
    choice = r.facts["activation_choice"]
    assert choice["modes"]["d0"] == "centred" and r.facts["dynamic_weights"] == ["diff.weight", "mix.weight"]
    assert [(c["weight"], c["steps"], c["variables"], c["axis"]) for c in r.facts["centred"]] == [("diff.weight", 12, 4, 1)]
    assert r.all_match and choice["error"] < 0.07 and r.weight_bytes <= budget
    # the file: the window minus its last step feeds the int8 FULLY_CONNECTED; a float one adds the levels back
    fb = schema()
    ops, types = names(fb)
    fm = fb.ModelT.InitFromPackedBuf((tmp_path / "roomy" / r.artifact).read_bytes(), 0)
    sg = fm.subgraphs[0]
    fcs = [types[sg.tensors[op.inputs[1]].type] for op in sg.operators if op_name(fm, op, ops) == "FULLY_CONNECTED"]
    assert sorted(fcs) == ["FLOAT32", "INT8", "INT8"]
    # a centred graph that cannot be made leaves the layer its dynamic -> float ladder, with the reason
    import edgetqs.runtimes.centring as centring

    def fail(*a: object, **k: object) -> None:
        raise RuntimeError("no centring today")

    monkeypatch.setattr(centring, "centre", fail)
    plain = convert(m, roomy, "tflite", tmp_path / "plain", ctx, spec)
    assert "centred" not in plain.facts and "centred" not in plain.facts["activation_choice"]["modes"].values()
    assert any("could not be made (no centring today); not offered" in n for n in plain.notes)
