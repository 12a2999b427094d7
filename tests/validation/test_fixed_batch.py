"""A model exported with a fixed batch (2, 3) is scored, converted (ort, ort-mobile) and checked unchanged: B contexts
per call, the last call padded, the same trajectories as the same weights at a symbolic batch."""

from __future__ import annotations

from pathlib import Path

import models
import numpy as np
import pytest

from edgetqs import api
from edgetqs.core.contexts import read_record, select_contexts
from edgetqs.core.model import load_model
from edgetqs.core.rollout import Rollout, SpecHints, infer_spec


def _record(path: Path) -> Path:
    np.save(path, np.random.default_rng(0).standard_normal((80, 1)).astype(np.float32))
    return path


@pytest.mark.parametrize("batch", [2, 3])
def test_host_rollout_runs_b_contexts_per_call_and_pads_the_last(tmp_path: Path, batch: int) -> None:
    fixed, free = load_model(models.masked_window(tmp_path / "f.onnx", batch=batch)), load_model(models.masked_window(tmp_path / "s.onnx"))
    rec = _record(tmp_path / "r.npy")
    spec = infer_spec(fixed, SpecHints())
    ctx = select_contexts(read_record(rec, spec), fixed, spec, 5, span=(0.0, 1.0))
    a = Rollout(fixed, spec, ctx.statics).run(ctx.arrays, 6)
    b = Rollout(free, infer_spec(free, SpecHints()), ctx.statics).run(ctx.arrays, 6)
    assert a.forward_calls == 6 * -(-5 // batch) and b.forward_calls == 6  # ceil(5 / B) calls a step; a symbolic batch takes all 5 at once
    assert a.steps[0].shape == b.steps[0].shape == (6, 5, 2, 1)  # the padded rows are dropped
    np.testing.assert_allclose(a.steps[0], b.steps[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [2, 3])
def test_fixed_batch_model_scores_converts_and_checks(tmp_path: Path, batch: int) -> None:
    p = models.masked_window(tmp_path / "mw.onnx", batch=batch)
    rec = _record(tmp_path / "r.npy")
    s = api.score(p, contexts=rec, k=5, horizon=4, cache=False)
    assert all(g.gamma is not None for g in s.groups)
    for fmt in ("ort", "ort-mobile"):
        plan = api.plan(s, target="raspberrypi", model=p, ratio=0.9, runtime=fmt)
        r = api.convert(p, plan, fmt, tmp_path / fmt, contexts=rec, k=5)
        assert r.all_match
        c = api.check(tmp_path / fmt / r.artifact, model=p, contexts=rec, k=5, horizon=6)
        # the device driver ran B contexts a call: 6 steps x ceil(5 / B) calls, the first excluded from the latency
        assert c.passed and c.batch == batch and c.latency_ms["n"] == 6 * -(-5 // batch) - 1, c.verdict


@pytest.mark.slow
@pytest.mark.tflite
def test_fixed_batch_tflite_keeps_the_batch_and_checks(tmp_path: Path) -> None:
    """onnx2tf gets the declared batch (a hard-coded reshape needs it); the runner feeds B rows an invoke."""
    p = models.masked_window(tmp_path / "mw.onnx", batch=2)
    rec = _record(tmp_path / "r.npy")
    s = api.score(p, contexts=rec, k=5, horizon=4, cache=False)
    plan = api.plan(s, target="raspberrypi", model=p, ratio=0.9, runtime="tflite")
    r = api.convert(p, plan, "tflite", tmp_path / "t", contexts=rec, k=5)
    assert r.all_match and "at batch 2" in r.notes[0]
    c = api.check(tmp_path / "t" / r.artifact, model=p, contexts=rec, k=5, horizon=6)
    assert c.passed and c.batch == 2, c.verdict


@pytest.mark.slow
@pytest.mark.mcu
def test_fixed_batch_tflm_calibrates_and_runs_at_the_batch(tmp_path: Path) -> None:
    """Full-integer calibration rows come at the model's batch (B rows a call), the TFLM graph keeps it."""
    p = models.state_mlp(tmp_path / "sm.onnx", batch=2)
    np.save(tmp_path / "r.npy", np.random.default_rng(0).standard_normal((80, 8)).astype(np.float32))
    s = api.score(p, contexts=tmp_path / "r.npy", k=5, horizon=4, cache=False)
    plan = api.plan(s, target="esp32s3", model=p, runtime="tflm")
    r = api.convert(p, plan, "tflm", tmp_path / "m", contexts=tmp_path / "r.npy", k=5)
    assert r.all_match
    c = api.check(tmp_path / "m" / r.artifact, model=p, contexts=tmp_path / "r.npy", k=5, horizon=6)
    assert c.passed and c.batch == 2, c.verdict


@pytest.mark.slow
@pytest.mark.qemu
def test_fixed_batch_checks_on_emulated_aarch64(tmp_path: Path) -> None:
    """The issue's report: `check` on qemu-pi4 failed "Got: 1 Expected: 2" for a batch-2 model."""
    p = models.masked_window(tmp_path / "mw.onnx", batch=2)
    rec = _record(tmp_path / "r.npy")
    s = api.score(p, contexts=rec, k=5, horizon=4, cache=False)
    plan = api.plan(s, target="raspberrypi", model=p, ratio=0.9)
    r = api.convert(p, plan, "ort", tmp_path / "o", contexts=rec, k=5)
    c = api.check(tmp_path / "o" / r.artifact, device="qemu-pi4", model=p, contexts=rec, k=5, horizon=6)
    assert c.passed and c.batch == 2 and c.machine == "aarch64", c.verdict
