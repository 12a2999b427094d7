"""The time projection `build` prints before a sweep, and its advice, followed to the letter."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import models
import numpy as np
import pytest

from edgetqs.bundle.build import build
from edgetqs.core.contexts import read_record, select_contexts
from edgetqs.core.model import load_model
from edgetqs.core.rollout import SpecHints, infer_spec
from edgetqs.sensitivity import projection
from edgetqs.sensitivity.projection import Projection, project_sweep
from edgetqs.sensitivity.scores import ProbeSettings


def test_projection_counts_groups_calls_and_the_auto_horizon(tmp_path: Path) -> None:
    m = load_model(models.masked_window(tmp_path / "mw.onnx", batch=2))
    np.save(tmp_path / "r.npy", np.random.default_rng(0).standard_normal((80, 1)).astype(np.float32))
    spec = infer_spec(m, SpecHints())
    ctx = select_contexts(read_record(tmp_path / "r.npy", spec), m, spec, 5, span=(0.0, 1.0))
    p = project_sweep(m, spec, ctx, ProbeSettings(horizon=7))
    assert (p.groups, p.horizon, p.batch, p.calls_per_step) == (2, 7, 2, 3) and p.call_seconds > 0
    assert p.sweep_seconds == pytest.approx((2 + projection.BASELINE_ROLLOUTS) * p.rollout_seconds)
    assert "x T=7 x 3 calls/step at batch 2" in p.describe()
    auto = project_sweep(m, spec, ctx, ProbeSettings(horizon=None, max_horizon=12))
    assert 4 <= auto.horizon <= 12 and "T~" in auto.describe()


def test_advice_only_above_the_limit_and_each_cut_is_smaller() -> None:
    base = Projection(groups=96, block_groups=12, horizon=20, horizon_is_bound=False, horizon_auto=False, k=8, batch=2, call_seconds=0.1)
    assert base.sweep_seconds == pytest.approx(99 * 20 * 4 * 0.1) and base.advice()[0].startswith("--groups block scores 12 module groups")
    assert "-k 4 (contexts) instead of 8: sweep ~6.6 min" in base.advice()[1]  # 99 x 20 x 2 calls x 0.1 s = 396 s
    par = Projection(
        groups=96, block_groups=12, horizon=20, horizon_is_bound=False, horizon_auto=False, k=8, batch=2, call_seconds=0.1, workers=4
    )
    assert par.sweep_seconds == pytest.approx((3 + 24) * 20 * 4 * 0.1) and "/ 4 workers" in par.describe()  # groups shared out
    quick = Projection(groups=4, block_groups=2, horizon=5, horizon_is_bound=False, horizon_auto=False, k=4, batch=None, call_seconds=1e-3)
    assert quick.advice() == []


def test_build_prints_the_projection_and_its_advice_works_when_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETQS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(projection, "ADVISE_ABOVE_S", 0.0)  # every projection is "too long": the advice is printed
    p = models.deep_mlp(tmp_path / "d.onnx")
    np.save(tmp_path / "r.npy", np.random.default_rng(0).standard_normal((120, 8)).astype(np.float32))
    lines: list[str] = []
    r = build(
        p,
        "raspberrypi",
        contexts=tmp_path / "r.npy",
        k=8,
        device="local",
        refine=False,
        output=tmp_path / "dist",
        log=lines.append,
        force=True,
    )
    assert r.passed
    text = "\n".join(lines)
    assert re.search(r"projected sweep: 10 groups \+ 3 baseline rollouts x T=\d+ x 1 call/step x [\d.]+ ms = ", text), text
    advice = [ln.split("to cut it: ")[1] for ln in lines if "to cut it: " in ln]
    assert advice[0].startswith("--groups block scores 5 module groups instead of 10") and advice[1].startswith("-k 4 ")
    # the advice, followed on the command line: fewer groups, fewer contexts, a PASSing bundle each time
    for extra, groups, k in ((["--groups", "block"], 5, 8), (["-k", "4"], 10, 4)):
        cmd = [
            sys.executable,
            "-m",
            "edgetqs.cli",
            "build",
            str(p),
            "-t",
            "raspberrypi",
            "-c",
            str(tmp_path / "r.npy"),
            "--device",
            "local",
        ]
        cmd += ["--no-refine", "-o", str(tmp_path / "dist2"), *(["-k", "8"] if "-k" not in extra else []), *extra]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
        assert run.returncode == 0, run.stderr
        s = json.loads((tmp_path / "dist2" / "d-raspberrypi" / "scores.json").read_text())
        assert len(s["groups"]) == groups and s["contexts"]["k"] == k
