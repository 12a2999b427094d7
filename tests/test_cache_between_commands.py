"""One score cache between commands: `score` then `build` with the same model, contexts and probe settings
reuse one entry, and say so (issue 18: `build` after `score` scored again)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import models
import numpy as np
import pytest

EXE = [sys.executable, "-m", "edgetqs.cli"]


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "EDGETQS_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run(EXE + list(args), capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_score_then_build_reuse_one_cache_entry(tmp_path: Path) -> None:
    models.state_mlp(tmp_path / "m.onnx")
    np.save(tmp_path / "rec.npy", np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32))
    (tmp_path / "edgetqs.toml").write_text('model = "m.onnx"\ncontexts = "rec.npy"\nk = 4\n\n[score]\nhorizon = 6\n')
    a = run(tmp_path, "score", "-o", "s.json", "-q")
    assert a.returncode == 0, a.stderr
    assert "reusing scores from" not in a.stderr
    entries = list((tmp_path / "cache" / "scores").glob("*.json"))
    assert len(entries) == 1
    b = run(tmp_path, "build", "--target", "x86-64", "-d", "local", "--ratio", "0.5")
    assert b.returncode in (0, 1), b.stderr
    line = next(ln for ln in b.stderr.splitlines() if "reusing scores from" in ln)
    assert str(entries[0]) in line and "T=6" in line, line
    assert list((tmp_path / "cache" / "scores").glob("*.json")) == entries  # no second entry
    assert json.loads((tmp_path / "dist" / "m-x86-64" / "manifest.json").read_text())["scores_cached"] is True
    # the bundle's scores are the ones `score` wrote
    s = json.loads((tmp_path / "s.json").read_text())
    bs = json.loads((tmp_path / "dist" / "m-x86-64" / "scores.json").read_text())
    assert [(g["name"], g["gamma"]) for g in bs["groups"]] == [(g["name"], g["gamma"]) for g in s["groups"]]
    # and `score` again (another output name) reuses the same entry, saying so
    c = run(tmp_path, "score", "-o", "s2.json", "-q")
    assert c.returncode == 0 and "reusing scores from" in c.stderr and str(entries[0]) in c.stderr, c.stderr
    # --force scores afresh
    d = run(tmp_path, "build", "--target", "x86-64", "-d", "local", "--ratio", "0.5", "--force")
    assert d.returncode in (0, 1) and "reusing scores from" not in d.stderr, d.stderr


def test_fresh_scores_of_weights_far_from_rms_one_are_reused_and_planned(tmp_path: Path) -> None:
    """The cache's gain-vs-gamma band allows for gamma's relative separation (eps / weight_rms): scores of an
    x10 map (weight rms 5) were refused as tampered by `plan` and never reused (found on issue 18's models)."""
    from edgetqs.core.inputs import resolve
    from edgetqs.sensitivity.cache import verify
    from edgetqs.sensitivity.scores import ProbeSettings
    from edgetqs.sensitivity.sweep import run_sweep

    models.exploding(tmp_path / "x10.onnx", factor=10.0)
    np.save(tmp_path / "rec.npy", (0.5 * np.random.default_rng(0).standard_normal((40, 4))).astype(np.float32))
    inp = resolve(tmp_path / "x10.onnx", None, contexts=tmp_path / "rec.npy", k=3)
    settings = ProbeSettings(horizon=4)
    s = run_sweep(inp.model, inp.spec, inp.contexts, settings)
    assert s.groups[0].weight_rms == pytest.approx(5.0)
    assert verify(s, inp.model, inp.spec, inp.contexts, settings) is None
    tampered = s.model_copy(update={"groups": (s.groups[0].model_copy(update={"gain": s.groups[0].gain * 1e6}),)})
    assert verify(tampered, inp.model, inp.spec, inp.contexts, settings) == "group 'w.weight' has a gain that does not fit its gamma"
