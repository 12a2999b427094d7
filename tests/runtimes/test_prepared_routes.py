"""Every route converts the prepared graph: canonicalised (ort, ort-mobile) and legalised (tflite, tflm),
recorded in convert.json, with plans on split recurrent weights read back piece by piece, and full-integer
plans priced to the byte of the artifact (slow tier: real onnx2tf, ai-edge-quantizer, tflite-micro)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import realmodels

from edgetqs.allocation.plan import PlanOptions, make_plan
from edgetqs.allocation.targets import find_target
from edgetqs.core.contexts import read_record, select_contexts
from edgetqs.core.inputs import resolve
from edgetqs.core.model import load_model
from edgetqs.core.project import load_project
from edgetqs.core.rollout import infer_spec
from edgetqs.examples import example_path
from edgetqs.runtimes.convert import ConvertError, convert
from edgetqs.sensitivity.scores import ProbeSettings
from edgetqs.sensitivity.sweep import run_sweep

pytestmark = [pytest.mark.slow]
STM = find_target("stm32h743")
PI = find_target("raspberrypi")


def recurrent_window(path: Path, kind: str, L: int = 8, C: int = 3, hidden: int = 8, seed: int = 0) -> Path:
    """x[B, L, C] -> y[B, 1, C]: a torch GRU/LSTM/RNN window forecaster (legacy export, dynamic batch), the
    one-step model of `realmodels` with the step axis kept so that the window mode takes it as it is."""
    torch = realmodels._torch()
    torch.manual_seed(seed)
    cell = realmodels._Recurrent.make(kind, C, hidden)

    class Window(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = cell

        def forward(self, x: Any) -> Any:
            return self.cell(x).unsqueeze(1)

    return realmodels._legacy(Window(), torch.randn(2, L, C), path)


def _scored(path: Path, C: int, horizon: int = 5, k: int = 3):
    m = load_model(path)
    spec = infer_spec(m)
    t = np.arange(80, dtype=np.float32)[:, None]
    rec = np.sin(0.3 * t + np.arange(C)[None, :]) + 0.05 * np.random.default_rng(0).standard_normal((80, C)).astype(np.float32)
    np.save(path.with_suffix(".npy"), rec.astype(np.float32))
    ctx = select_contexts(read_record(path.with_suffix(".npy"), spec), m, spec, k)
    return m, spec, ctx, run_sweep(m, spec, ctx, ProbeSettings(horizon=horizon))


def _bytes_agree(plan: Any, r: Any) -> None:
    """Plan bytes == artifact bytes, in total and tensor by tensor (the read-back's figures); the only
    difference allowed is what convert.json names: copies of shared biases the quantizer made."""
    planned = {t.name: t.bytes for t in plan.tensors}
    diff = {c.name: (planned[c.name], c.bytes) for c in r.tensors if c.bytes and planned[c.name] != c.bytes}
    copies = r.facts["shared_bias_copies"]["bytes"]
    assert r.planned_weight_bytes + copies == r.weight_bytes, (r.planned_weight_bytes, r.weight_bytes, diff)
    assert sum(b - a for a, b in diff.values()) == copies, diff


@pytest.mark.mcu
@pytest.mark.parametrize("kind", [pytest.param("GRU", marks=pytest.mark.long), pytest.param("LSTM", marks=pytest.mark.long)])
def test_recurrent_window_model_reaches_tflm_through_unrolling(kind: str, tmp_path: Path) -> None:
    m, spec, ctx, s = _scored(recurrent_window(tmp_path / f"{kind}.onnx", kind), C=3)
    plan = make_plan(s, m, STM, PlanOptions(runtime="tflm"))
    assert plan.pricing is not None and plan.pricing["exact"]
    r = convert(m, plan, "tflm", tmp_path / "out", ctx, spec)
    prepared = r.facts["prepared"]
    rules = {w["rule"] for w in prepared["rewrites"]}
    assert f"{kind.lower()}_unroll" in rules
    unroll = next(w for w in prepared["rewrites"] if w["rule"] == f"{kind.lower()}_unroll")
    assert unroll["deviation"]["contexts"]["max_rel"] < 1e-5  # exact up to float rounding, on the model's own inputs
    assert prepared["canonicalized"]["batch"] == 1
    # the plan's W and R are read back in their gate pieces, each at the planned precision
    pieces = {c.name: c.found for c in r.tensors if "gate pieces" in c.found}
    assert any(n.endswith("W") or "weight_ih" in n or n.startswith("onnx::") for n in pieces), pieces
    assert r.all_match and r.first_nonfinite_step is None
    _bytes_agree(plan, r)
    assert r.error_by_lead[-1] < STM.validation.tolerance  # int16 activations, one scale per gate piece (GRU 0.13, LSTM lower)
    saved = json.loads((tmp_path / "out" / "convert.json").read_text())
    assert saved["facts"]["prepared"]["rewrites"][0]["deviation"] is not None


@pytest.mark.mcu
def test_blizzard_gelu_reaches_tflm_with_its_deviation_and_exact_bytes(tmp_path: Path) -> None:
    inp = resolve(None, load_project(example_path("blizzard") / "edgetqs.toml"), k=2)
    s = run_sweep(inp.model, inp.spec, inp.contexts, ProbeSettings(horizon=3))
    plan = make_plan(s, inp.model, STM, PlanOptions(runtime="tflm"))
    r = convert(inp.model, plan, "tflm", tmp_path / "out", inp.contexts, inp.spec)
    rewrites = r.facts["prepared"]["rewrites"]
    gelu = [w for w in rewrites if w["rule"] == "gelu_tanh"]
    assert gelu and all(w["op"] == "Gelu" for w in gelu)
    dev = gelu[0]["deviation"]
    # the tanh form is within 4.8e-4 of GELU per unit input; through the model, a few 1e-6 of its output scale
    assert 0 < dev["contexts"]["max_rel"] < 1e-4 and dev["contexts"]["n"] > 0 and dev["random"]["max_rel"] < 1e-4
    assert any("gelu_tanh" in n for n in r.notes)
    assert r.all_match
    _bytes_agree(plan, r)


@pytest.mark.mcu
def test_op_without_a_rewrite_is_still_named(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    b = numpy_helper.from_array(np.full(4, 0.1, np.float32), "b")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("BiasGelu", ["h", "b"], ["y"], domain="com.microsoft")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])],
        [w, b],
    )
    path = tmp_path / "biasgelu.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]), path)
    m, spec, ctx, s = _scored(path, C=4)
    plan = make_plan(s, m, STM, PlanOptions(runtime="tflm", exact_bytes=False))
    with pytest.raises(ConvertError) as e:
        convert(m, plan, "tflm", tmp_path / "out", ctx, spec)
    # the op, the node and why; no advice the target refuses (stm32h743 runs only tflm)
    assert "BiasGelu" in str(e.value) and "no rewrite" in str(e.value) and "--format" not in str(e.value)


def test_ort_converts_the_canonical_graph_of_a_legacy_export(tmp_path: Path) -> None:
    """The legacy exporter's run-time circular pad is folded before the ORT route, and convert.json says so."""
    path = realmodels.circular_conv_state(tmp_path / "circ.onnx")
    m = load_model(path)
    spec = infer_spec(m)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "rec.npy", rng.standard_normal((30, *m.inputs[0].shape[1:])).astype(np.float32))
    ctx = select_contexts(read_record(tmp_path / "rec.npy", spec), m, spec, 2)
    s = run_sweep(m, spec, ctx, ProbeSettings(horizon=3))
    plan = make_plan(s, m, PI, PlanOptions(runtime="ort", ratio=0.4))
    r = convert(m, plan, "ort", tmp_path / "out", ctx, spec)
    canon = r.facts["prepared"]["canonicalized"]
    assert canon["folded"] and canon["nodes_after"] < canon["nodes_before"] and canon["batch"] is None
    assert r.facts["prepared"]["deviation_canonicalize"]["contexts"]["max_rel"] < 1e-6
    assert r.facts["prepared"]["rewrites"] == []
    assert r.all_match and any(n.startswith("canonicalised: folded") for n in r.notes)


@pytest.mark.mcu
def test_lorenz96_int16x8_plan_prices_int64_biases_to_the_byte(tmp_path: Path) -> None:
    """int16x8 kernels store int64 biases (issue 14: the plan said 16,568 B, the artifact stored 21,180 B)."""
    inp = resolve(None, load_project(example_path("lorenz96") / "edgetqs.toml"), k=3)
    s = run_sweep(inp.model, inp.spec, inp.contexts, ProbeSettings(horizon=5))
    plan = make_plan(s, inp.model, STM, PlanOptions(runtime="tflm"))
    assert plan.activations == "int16" and plan.pricing["exact"]
    estimate = make_plan(s, inp.model, STM, PlanOptions(runtime="tflm", exact_bytes=False))
    assert not estimate.pricing["exact"] and any("exact bytes" in n for n in estimate.notes)
    r = convert(inp.model, plan, "tflm", tmp_path / "out", inp.contexts, inp.spec)
    assert r.activations == "int16" and r.all_match
    assert {t.found for t in r.tensors if t.name.endswith("bias")} == {"int64"}
    _bytes_agree(plan, r)
    assert r.facts["shared_bias_copies"]["bytes"] == 0
    # the estimate from the ONNX graph alone is close (it cannot see what the converter folds), the exact price is exact
    assert abs(estimate.weight_bytes - r.weight_bytes) < 0.01 * r.weight_bytes
