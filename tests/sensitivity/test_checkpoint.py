"""Resumable sweeps: a sweep killed part-way resumes from its checkpoint and gives the uninterrupted result."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import models
import numpy as np
import pytest
from test_backends import same

from edgetqs import api
from edgetqs.core.contexts import read_record, select_contexts
from edgetqs.core.model import load_model
from edgetqs.core.rollout import infer_spec
from edgetqs.sensitivity.cache import cache_path, checkpoint_path, verify
from edgetqs.sensitivity.scores import ProbeSettings
from edgetqs.sensitivity.sweep import run_sweep


def _setup(tmp_path: Path, k: int = 4):
    path = models.deep_mlp(tmp_path / "deep.onnx")  # 10 groups
    rec = tmp_path / "rec.npy"
    np.save(rec, np.random.default_rng(3).standard_normal((120, 8)).astype(np.float32))
    m = load_model(path)
    spec = infer_spec(m)
    return m, spec, select_contexts(read_record(rec, spec), m, spec, k), path, rec


def _interrupt_after(n: int):
    def progress(done: int, total: int) -> None:
        if done == n:
            raise KeyboardInterrupt

    return progress


@pytest.mark.parametrize("backend", ["serial", "processes"])
def test_interrupted_sweep_resumes_to_the_uninterrupted_result(tmp_path: Path, backend: str) -> None:
    m, spec, ctx, _, _ = _setup(tmp_path)
    st = ProbeSettings(horizon=5, seed=4)
    whole = run_sweep(m, spec, ctx, st, strategy="feed")
    ckpt = tmp_path / "c.partial"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(m, spec, ctx, st, strategy="feed", backend=backend, workers=None, checkpoint=ckpt, progress=_interrupt_after(4))
    lines = ckpt.read_text().splitlines()
    assert json.loads(lines[0])["kind"] == "edgetqs sweep checkpoint" and len(lines) >= 1 + 4
    said: list[str] = []
    seen: list[int] = []
    resumed = run_sweep(m, spec, ctx, st, strategy="feed", checkpoint=ckpt, log=said.append, progress=lambda d, t: seen.append(d))
    same(whole, resumed)
    assert said[0].startswith(f"resuming the sweep from its checkpoint {ckpt.name}: ") and "of 10 tasks already done" in said[0]
    assert seen[0] == len(lines) - 1 and seen[-1] == 10  # the bar starts at the restored count
    assert not ckpt.exists()  # a completed sweep leaves no checkpoint


def test_a_sweep_killed_outright_resumes_and_a_torn_line_is_dropped(tmp_path: Path) -> None:
    m, spec, ctx, path, rec = _setup(tmp_path)
    st = ProbeSettings(horizon=5, seed=4)
    whole = run_sweep(m, spec, ctx, st, strategy="feed")
    ckpt = tmp_path / "k.partial"
    # a separate process SIGKILLs itself after 6 tasks: no finally block, no flush at exit
    script = textwrap.dedent(f"""
        import os, signal
        from edgetqs.core.contexts import read_record, select_contexts
        from edgetqs.core.model import load_model
        from edgetqs.core.rollout import infer_spec
        from edgetqs.sensitivity.scores import ProbeSettings
        from edgetqs.sensitivity.sweep import run_sweep
        m = load_model({str(path)!r}); spec = infer_spec(m)
        ctx = select_contexts(read_record({str(rec)!r}, spec), m, spec, 4)
        def kill(done, total):
            if done == 6:
                os.kill(os.getpid(), signal.SIGKILL)
        run_sweep(m, spec, ctx, ProbeSettings(horizon=5, seed=4), strategy="feed", checkpoint={str(ckpt)!r}, progress=kill)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == -9, r.stderr
    assert len(ckpt.read_text().splitlines()) == 1 + 6
    with open(ckpt, "ab") as f:
        f.write(b'{"task": 7, "eps": 0.1, "n_par')  # a write torn by the kill
    said: list[str] = []
    resumed = run_sweep(m, spec, ctx, st, strategy="feed", checkpoint=ckpt, log=said.append)
    same(whole, resumed)
    assert said == [f"resuming the sweep from its checkpoint {ckpt.name}: 6 of 10 tasks already done"]


def test_a_checkpoint_of_another_run_is_not_trusted(tmp_path: Path) -> None:
    m, spec, ctx, _, _ = _setup(tmp_path)
    st = ProbeSettings(horizon=5, seed=4)
    ckpt = tmp_path / "x.partial"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(m, spec, ctx, st, strategy="feed", checkpoint=ckpt, progress=_interrupt_after(3))
    lines = ckpt.read_text().splitlines()
    head = json.loads(lines[0])
    head["onnxruntime"] = "0.0.1"  # written by another onnxruntime: its rollouts may differ in the last bits
    ckpt.write_text("\n".join([json.dumps(head), *lines[1:]]) + "\n")
    said: list[str] = []
    again = run_sweep(m, spec, ctx, st, strategy="feed", checkpoint=ckpt, log=said.append)
    same(run_sweep(m, spec, ctx, st, strategy="feed"), again)
    assert said == [f"note: the checkpoint {ckpt.name} belongs to another run of this sweep (other runtime or reference); starting over"]


def test_score_resumes_through_the_cache_and_the_entry_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETQS_CACHE_DIR", str(tmp_path / "cache"))
    m, spec, ctx, path, rec = _setup(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        api.score(path, rec, k=4, horizon=5, strategy="feed", progress=_interrupt_after(5))
    st = ProbeSettings(horizon=5)
    entry = cache_path(m, spec, ctx, st)
    assert checkpoint_path(entry).exists() and not entry.exists()
    said: list[str] = []
    resumed = api.score(path, rec, k=4, horizon=5, strategy="feed", log=said.append)
    assert any("5 of 10 tasks already done" in s for s in said)
    assert entry.exists() and not checkpoint_path(entry).exists()
    assert verify(resumed, m, spec, ctx, st) is None
    same(run_sweep(m, spec, ctx, st, strategy="feed"), resumed)


def test_ladder_sweeps_resume_and_force_starts_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETQS_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "scores"
    m, spec, ctx, path, rec = _setup(tmp_path)
    kw = dict(k=4, horizon=5, ladder=[3, 4], strategy="feed")
    whole = run_sweep(m, spec, ctx, ProbeSettings(horizon=5, ladder=(3, 4)), strategy="feed")
    with pytest.raises(KeyboardInterrupt):  # 10 tasks of the main probe, then the 3-bit ladder's: stop in the latter
        api.score(path, rec, progress=_interrupt_after(14), **kw)
    assert sorted(p.name.split(".", 1)[1] for p in folder.glob("*.partial*")) == ["partial.3bits"]  # the main sweep completed
    said: list[str] = []
    resumed = api.score(path, rec, log=said.append, **kw)
    resuming = [x for x in said if "resuming" in x]  # said once (after the notes on the rollout and the contexts)
    assert len(resuming) == 1 and "4 of 10 tasks already done" in resuming[0]
    same(whole, resumed)
    assert not list(folder.glob("*.partial*"))
    with pytest.raises(KeyboardInterrupt):
        api.score(path, rec, force=True, progress=_interrupt_after(14), **kw)
    said.clear()
    forced = api.score(path, rec, force=True, log=said.append, **kw)
    assert not any("resuming" in x for x in said)  # --force scores again from scratch
    same(whole, forced)
