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
