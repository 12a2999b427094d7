"""Shared set-up for the check tests: a small state model converted to ORT, and its float reference."""

from __future__ import annotations

from pathlib import Path

import models
import numpy as np

from edgetqs.allocation.plan import PlanOptions, make_plan
from edgetqs.allocation.targets import find_target
from edgetqs.core.contexts import read_record, select_contexts
from edgetqs.core.model import load_model
from edgetqs.core.rollout import infer_spec
from edgetqs.runtimes.convert import convert
from edgetqs.sensitivity.scores import ProbeSettings
from edgetqs.sensitivity.sweep import run_sweep
from edgetqs.validation.reference import make_reference


def ort_artifact(tmp_path: Path, horizon: int = 10):
    """(artifact path, Reference, model) for deep_mlp planned at 40% of fp32 on the Pi and converted to ORT."""
    m = load_model(models.deep_mlp(tmp_path / "d.onnx"))
    spec = infer_spec(m)
    rec = tmp_path / "r.npy"
    np.save(rec, np.random.default_rng(0).standard_normal((60, 8)).astype(np.float32))
    ctx = select_contexts(read_record(rec, spec), m, spec, 3, span=(0.0, 0.8))
    s = run_sweep(m, spec, ctx, ProbeSettings(horizon=5))
    plan = make_plan(s, m, find_target("raspberrypi"), PlanOptions(ratio=0.4))
    r = convert(m, plan, "ort", tmp_path / "art", ctx, spec)
    return tmp_path / "art" / r.artifact, make_reference(m, spec, ctx, horizon), m
