"""TFLite-Micro artifacts with the real onnx2tf, ai-edge-quantizer and tflite-micro interpreter (slow tier: CI runs it)."""

from __future__ import annotations

import sys
from pathlib import Path

import models
import numpy as np
import pytest

from edgetqs.allocation.plan import PlanOptions, make_plan
from edgetqs.allocation.targets import find_target
from edgetqs.core.contexts import read_record, select_contexts
from edgetqs.core.inputs import resolve
from edgetqs.core.model import load_model
from edgetqs.core.project import load_project
from edgetqs.core.rollout import infer_spec
from edgetqs.errors import OptionalDependencyError
from edgetqs.examples import example_path
from edgetqs.runtimes.convert import ConvertError, convert
from edgetqs.runtimes.tflm import _probe, measure_arena
from edgetqs.sensitivity.scores import ProbeSettings
from edgetqs.sensitivity.sweep import run_sweep

pytestmark = [pytest.mark.slow, pytest.mark.mcu]
STM = find_target("stm32h743")


def _deep(tmp_path: Path, act: str = "Tanh"):
    m = load_model(models.deep_mlp(tmp_path / "d.onnx", act=act))
    spec = infer_spec(m)
    rec = tmp_path / "r.npy"
    np.save(rec, np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32))
    ctx = select_contexts(read_record(rec, spec), m, spec, 3)
    s = run_sweep(m, spec, ctx, ProbeSettings(horizon=5))
    return m, spec, ctx, s


@pytest.fixture(scope="module")
def station_tflm(tmp_path_factory):
    """The station example planned for the STM32H743 and converted once for the tests below."""
    out = tmp_path_factory.mktemp("tflm")
    inp = resolve(None, load_project(example_path("station") / "edgetqs.toml"), k=4)
    s = run_sweep(inp.model, inp.spec, inp.contexts, ProbeSettings(horizon=8))
    plan = make_plan(s, inp.model, STM, PlanOptions(runtime="tflm"))
    return inp, plan, convert(inp.model, plan, "tflm", out, inp.contexts, inp.spec), out


def test_station_full_integer_int16_activations_follow_float(station_tflm) -> None:
    inp, plan, r, out = station_tflm
    assert r.all_match and r.activations == "int16"
    found = {t.name: t.found for t in r.tensors}
    assert found["l1.weight"] == "int8-channel" and found["in_std"] == "int16-tensor"
    assert found["l1.bias"] in ("int32", "int64")  # int16x8 kernels take int64 biases
    # int16 activations: the full-integer rollout stays close to float (int8 activations do not, see below)
    assert r.error_by_lead[-1] < 0.15
    assert r.error_by_lead[-1] == pytest.approx(r.simulated_error_by_lead[-1], rel=0.5)
    assert r.file_bytes <= plan.budget_bytes and r.arena_bytes <= STM.ram_budget_bytes
    # the bisected minimum sits near what the recording allocator reports
    assert 0.5 * r.arena_bytes_reported <= r.arena_bytes <= 2 * r.arena_bytes_reported
    assert sorted(p.name for p in out.iterdir()) == ["convert.json", "station.tflm.tflite"]
    assert "tflite-micro" in r.versions


def test_undersized_arena_crashes_only_the_child(station_tflm) -> None:
    _, _, r, out = station_tflm
    ok, _ = _probe(out / r.artifact, r.arena_bytes - 64, 1)
    assert not ok  # the child died (segfault or allocation error); we are still here
    ok, log = _probe(out / r.artifact, r.arena_bytes, 1)
    assert ok and "Arena allocation total" in log


def test_int8_activations_are_worse_than_int16(station_tflm, tmp_path: Path) -> None:
    inp, plan, r16, _ = station_tflm
    r8 = convert(inp.model, plan, "tflm", tmp_path, inp.contexts, inp.spec, activations="int8")
    assert r8.activations == "int8"
    # one int8 input scale spans pressure (~1000 hPa) and wind (~5 m/s): the small variables round away
    assert r8.error_by_lead[-1] > 3 * r16.error_by_lead[-1]


def test_arena_over_the_ram_budget_fails_and_leaves_nothing(station_tflm, tmp_path: Path) -> None:
    inp, plan, r, _ = station_tflm
    small = tmp_path / "tiny.toml"
    text = (
        Path(STM.path)
        .read_text()
        .replace("ram_budget_bytes = 524288", "ram_budget_bytes = 4096")
        .replace('name = "stm32h743"', 'name = "tiny"')
    )
    small.write_text(text)

    p2 = plan.model_copy(update={"target": str(small)})
    out = tmp_path / "out"
    with pytest.raises(ConvertError, match=r"arena needs [\d,]+ bytes, over target 'tiny''s RAM budget of 4,096"):
        convert(inp.model, p2, "tflm", out, inp.contexts, inp.spec)
    assert not out.exists() or not any(out.iterdir())
    assert not list(tmp_path.glob(".edgetqs-convert-*"))


def test_op_without_tflm_kernel_is_legalised(tmp_path: Path) -> None:
    """GELU has no TFLite-Micro kernel ("Didn't find op for builtin opcode 'GELU'" before legalisation): its
    tanh form converts, and convert.json records the rewrite; an op with no rewrite: test_prepared_routes."""
    m, spec, ctx, s = _deep(tmp_path, act="Gelu")
    plan = make_plan(s, m, STM, PlanOptions(runtime="tflm"))
    r = convert(m, plan, "tflm", tmp_path / "out", ctx, spec)
    assert r.all_match and {w["rule"] for w in r.facts["prepared"]["rewrites"]} == {"gelu_tanh"}
    assert r.planned_weight_bytes == r.weight_bytes


def test_small_model_arena_and_readback(tmp_path: Path) -> None:
    m, spec, ctx, s = _deep(tmp_path)
    plan = make_plan(s, m, STM, PlanOptions(runtime="tflm"))
    r = convert(m, plan, "tflm", tmp_path / "out", ctx, spec)
    assert r.all_match and r.first_nonfinite_step is None
    arena, reported, probes = measure_arena(tmp_path / "out" / r.artifact, 1)
    assert arena == r.arena_bytes and probes >= 3  # deterministic


def test_plan_for_another_runtime_is_refused(tmp_path: Path) -> None:
    m, spec, ctx, s = _deep(tmp_path)
    plan = make_plan(s, m, find_target("raspberrypi"), PlanOptions(runtime="tflite", ratio=1.0))
    with pytest.raises(ConvertError, match="runtime 'tflite'"):
        convert(m, plan, "tflm", tmp_path / "out", ctx, spec)


def test_missing_tflite_micro_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    m, spec, ctx, s = _deep(tmp_path)
    plan = make_plan(s, m, STM, PlanOptions(runtime="tflm"))
    monkeypatch.setitem(sys.modules, "tflite_micro", None)  # import fails as if not installed
    with pytest.raises(OptionalDependencyError, match=r"tflite-micro.*edgetqs\[mcu\]"):
        convert(m, plan, "tflm", tmp_path / "out", ctx, spec)


def test_gptq_plans_store_gptq_integers_with_requantized_biases(station_tflm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPTQ plan for TFLite-Micro: GPTQ's integers and scales replace the quantizer's, and every int32/int64 bias of
    a kernel whose weight changed sits at input scale x the new weight scales (the kernels assume it). Read back, the
    weights are GPTQ's; with the writer removed, convert refuses "integers differ"."""
    from edgetqs.allocation.planner import plan_stage
    from edgetqs.allocation.rounding import Rounder
    from edgetqs.runtimes.litert import WEIGHT_OPS, names, op_name, schema
    from edgetqs.runtimes.pricing import BIAS_POS

    inp, _, r_rtn, _ = station_tflm
    s = run_sweep(inp.model, inp.spec, inp.contexts, ProbeSettings(horizon=8))
    plan = plan_stage(s, inp.model, STM, PlanOptions(runtime="tflm", rounding="gptq"), spec=inp.spec, contexts=inp.contexts)
    r = convert(inp.model, plan, "tflm", tmp_path / "g", inp.contexts, inp.spec)
    assert r.all_match and r.activations == r_rtn.activations
    assert any("gptq rounding" in n for n in r.notes)
    fb = schema()
    ops, types = names(fb)
    m = fb.ModelT.InitFromPackedBuf((tmp_path / "g" / r.artifact).read_bytes(), 0)
    sg = m.subgraphs[0]
    rounder = Rounder(inp.model, "gptq", inp.contexts, inp.spec, plan.horizon)
    stored = []
    kernels = 0
    for op in sg.operators:
        name = op_name(m, op, ops)
        if name not in WEIGHT_OPS or name not in BIAS_POS:
            continue
        w, b, x = (sg.tensors[op.inputs[i]] for i in (WEIGHT_OPS[name], BIAS_POS[name], 0))
        s_w, s_b, s_x = (np.asarray(t.quantization.scale, np.float64) for t in (w, b, x))
        assert np.allclose(s_b, s_x[0] * s_w, rtol=1e-5)  # the bias follows the new weight scales
        q = np.asarray(m.buffers[w.buffer].data, np.uint8).view(np.int8).reshape(tuple(w.shape)).astype(np.float64)
        stored.append(np.sort((q * s_w.reshape(-1, *[1] * (q.ndim - 1))).ravel()))
        kernels += 1
    assert kernels == 4
    for t in plan.tensors:
        if t.name.endswith("weight"):
            want = np.sort(rounder.integers(t.name, t.precision).dequantize().ravel())
            assert any(v.shape == want.shape and np.allclose(v, want, rtol=1e-5) for v in stored), t.name
    print(f"\nstation on stm32h743 ({r.activations}): worst nRMSE RTN {max(r_rtn.error_by_lead):.4f}, GPTQ {max(r.error_by_lead):.4f}")
    assert max(r.error_by_lead) < 0.2
    from edgetqs.runtimes import tflite_integers

    monkeypatch.setattr(tflite_integers, "write_plan_integers", lambda buf, *a, **k: buf)
    with pytest.raises(
        ConvertError, match=r"l\d.weight' planned int8-channel, stored int8-channel \(integers differ from the plan's gptq rounding\)"
    ):
        convert(inp.model, plan, "tflm", tmp_path / "r", inp.contexts, inp.spec)
