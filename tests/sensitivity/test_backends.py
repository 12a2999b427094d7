"""Sweep backends: every backend gives the same scores to the last bit; workers that die are replaced."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import models
import numpy as np
import pytest

from edgetqs.core.contexts import read_record, select_contexts
from edgetqs.core.model import load_model
from edgetqs.core.rollout import infer_spec
from edgetqs.errors import BadInputError, BadModelError, OptionalDependencyError
from edgetqs.sensitivity.backends import BACKENDS, RayBackend, local_default, make_backend
from edgetqs.sensitivity.scores import ProbeSettings, Scores
from edgetqs.sensitivity.sweep import run_sweep
from edgetqs.sensitivity.tasks import context_shares, plan_tasks


def _setup(path: Path, tmp_path: Path, k: int = 8):
    m = load_model(path)
    spec = infer_spec(m)
    rec = tmp_path / "rec.npy"
    np.save(rec, np.random.default_rng(3).standard_normal((120, m.inputs[0].shape[-1] or 8)).astype(np.float32))
    return m, spec, select_contexts(read_record(rec, spec), m, spec, k)


def same(a: Scores, b: Scores) -> None:
    """Same numbers to the last bit, in the same order (wall time, workers and notes may differ)."""
    assert a.groups == b.groups
    assert [g.name for g in a.groups] == [g.name for g in b.groups]
    assert a.state_exponent == b.state_exponent
    assert (a.horizon, a.strategy, a.forward_calls) == (b.horizon, b.strategy, b.forward_calls)


@pytest.fixture
def wide(tmp_path: Path) -> Path:
    """1.07 M parameters in 6 groups: few enough groups that each group's contexts are shared out between tasks."""
    return models.deep_mlp(tmp_path / "wide.onnx", hidden=1024, layers=3)


def test_few_groups_of_a_large_model_share_out_the_contexts() -> None:
    assert context_shares(40, 8, 10**8, None) == [(0, 8)]  # many groups: one task per group
    assert context_shares(6, 8, 10**5, None) == [(0, 8)]  # a small model: batching beats splitting
    assert context_shares(6, 8, 10**6, None) == [(0, 3), (3, 6), (6, 8)]
    assert context_shares(2, 8, 10**6, None) == [(0, 2), (2, 4), (4, 6), (6, 8)]  # at least 2 contexts a share
    assert context_shares(2, 3, 10**6, None) == [(0, 3)]
    assert context_shares(2, 8, 10**6, 4) == [(0, 4), (4, 8)]  # whole batches of a fixed-batch model
    tasks = plan_tasks(2, [(0, 3), (3, 8)])
    assert [(t.index, t.group, t.start, t.stop) for t in tasks] == [(0, 0, 0, 3), (1, 0, 3, 8), (2, 1, 0, 3), (3, 1, 3, 8)]


@pytest.mark.parametrize("strategy", ["feed", "rebuild"])
def test_processes_give_the_serial_scores_to_the_last_bit(wide: Path, tmp_path: Path, strategy: str) -> None:
    m, spec, ctx = _setup(wide, tmp_path)
    st = ProbeSettings(horizon=4, seed=2)
    serial = run_sweep(m, spec, ctx, st, strategy=strategy)
    procs = run_sweep(m, spec, ctx, st, workers=2, strategy=strategy, backend="processes")
    assert serial.workers == 1 and procs.workers == 2
    same(serial, procs)
    # 6 groups x 3 shares of the 8 contexts, + the reference and the state rollout in the same 3 shares
    assert serial.forward_calls == 4 * 3 * (6 + 2)


def test_sessions_are_single_threaded_everywhere_so_the_bits_match(tmp_path: Path) -> None:
    # 144 -> 512 -> 512 -> 144 with weights fed as inputs: onnxruntime rounds differently on 1 and 2 threads
    # here, so a serial sweep on all cores and single-threaded workers would disagree in the last bits
    m, spec, ctx = _setup(models.deep_mlp(tmp_path / "t.onnx", n=144, hidden=512, layers=3), tmp_path, k=2)
    st = ProbeSettings(horizon=3)
    same(run_sweep(m, spec, ctx, st, strategy="feed"), run_sweep(m, spec, ctx, st, strategy="feed", backend="processes", workers=2))


def test_backend_names_and_options_are_checked() -> None:
    assert BACKENDS.names() == ("serial", "processes", "ray")
    assert make_backend(None, None).name == "serial" and make_backend(None, 3).name == "processes"
    assert local_default(10**5) == ("serial", None)
    assert local_default(10**7) == (("processes", os.cpu_count()) if (os.cpu_count() or 1) > 1 else ("serial", None))
    with pytest.raises(BadInputError, match="unknown sweep backend 'magic'; expected one of serial, processes, ray"):
        make_backend("magic")
    with pytest.raises(BadInputError, match="address 'h:6379' is for the ray backend"):
        make_backend("processes", 2, "h:6379")
    with pytest.raises(BadInputError, match="workers 3 with the serial backend"):
        make_backend("serial", 3)
    with pytest.raises(BadInputError, match="workers -1"):
        make_backend("processes", -1)
    assert make_backend("processes", 0).workers == (os.cpu_count() or 1)  # 0: every core


def test_missing_ray_names_the_extra(state_model: Path, record: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without the extra sees: import fails
    m = load_model(state_model)
    spec = infer_spec(m)
    ctx = select_contexts(read_record(record, spec), m, spec, 2)
    with pytest.raises(OptionalDependencyError, match=r"pip install 'edgetqs\[ray\]'"):
        run_sweep(m, spec, ctx, ProbeSettings(horizon=2), backend="ray")


def test_a_killed_worker_process_has_its_tasks_run_again(wide: Path, tmp_path: Path) -> None:
    m, spec, ctx = _setup(wide, tmp_path)
    st = ProbeSettings(horizon=4, seed=2)
    serial = run_sweep(m, spec, ctx, st, strategy="feed")
    killed: list[int] = []

    def kill_one(done: int, total: int) -> None:
        import multiprocessing

        if done == 1 and not killed:
            kids = multiprocessing.active_children()
            if kids:
                killed.append(kids[0].pid or 0)
                os.kill(kids[0].pid or 0, signal.SIGKILL)

    procs = run_sweep(m, spec, ctx, st, workers=2, strategy="feed", backend="processes", progress=kill_one)
    assert killed
    same(serial, procs)
    assert any("run again" in n for n in procs.notes)


# --- Ray: a local cluster started here ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("strategy", ["feed", "rebuild"])
@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.slow
@pytest.mark.ray
def test_ray_gives_the_serial_scores_to_the_last_bit(wide: Path, tmp_path: Path, strategy: str) -> None:
    m, spec, ctx = _setup(wide, tmp_path)
    st = ProbeSettings(horizon=4, seed=2)
    serial = run_sweep(m, spec, ctx, st, strategy=strategy)
    seen: list[tuple[int, int]] = []
    on_ray = run_sweep(m, spec, ctx, st, strategy=strategy, backend="ray", progress=lambda d, t: seen.append((d, t)))
    same(serial, on_ray)
    assert on_ray.workers == 2
    assert seen == [(i, 18) for i in range(1, 19)]  # streamed: one report per finished task


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.slow
@pytest.mark.ray
def test_a_killed_ray_worker_has_its_tasks_retried(wide: Path, tmp_path: Path) -> None:
    m, spec, ctx = _setup(wide, tmp_path)
    st = ProbeSettings(horizon=6, seed=2)
    serial = run_sweep(m, spec, ctx, st, strategy="feed")
    backend = RayBackend()
    killed: list[int] = []

    def kill_one(done: int, total: int) -> None:
        if done == 2 and not killed:
            killed.append(backend.pids[0])
            os.kill(backend.pids[0], signal.SIGKILL)

    on_ray = run_sweep(m, spec, ctx, st, strategy="feed", backend=backend, progress=kill_one)
    assert killed
    same(serial, on_ray)
    assert any("ray backend" in n and "run again" in n for n in on_ray.notes)


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.slow
@pytest.mark.ray
def test_ctrl_c_stops_the_ray_workers_and_the_sweep_resumes(wide: Path, tmp_path: Path) -> None:
    m, spec, ctx = _setup(wide, tmp_path)
    st = ProbeSettings(horizon=4, seed=2)
    whole = run_sweep(m, spec, ctx, st, strategy="feed")
    backend = RayBackend()
    ckpt = tmp_path / "sweep.partial"

    def interrupt(done: int, total: int) -> None:
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(m, spec, ctx, st, strategy="feed", backend=backend, progress=interrupt, checkpoint=ckpt)
    deadline = time.monotonic() + 30
    alive = list(backend.pids)
    while alive and time.monotonic() < deadline:  # the actors are killed, not left running
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.2)
    assert not alive
    assert len(ckpt.read_text().splitlines()) == 1 + 5  # header + the five finished tasks
    said: list[str] = []
    resumed = run_sweep(m, spec, ctx, st, strategy="feed", backend="ray", checkpoint=ckpt, log=said.append)
    same(whole, resumed)
    assert said == [f"resuming the sweep from its checkpoint {ckpt.name}: 5 of 18 tasks already done"]
    assert not ckpt.exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("over_limit", [False, True])
def test_external_data_models_sweep_like_the_inline_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, over_limit: bool) -> None:
    import onnx

    import edgetqs.core.model as model_mod

    inline = models.deep_mlp(tmp_path / "d.onnx")
    ext = tmp_path / "e.onnx"
    onnx.save(onnx.load(str(inline)), str(ext), save_as_external_data=True, location="e.onnx.data", size_threshold=0)
    m, spec, ctx = _setup(inline, tmp_path, k=4)
    st = ProbeSettings(horizon=4)
    want = run_sweep(m, spec, ctx, st, strategy="feed")
    if over_limit:  # as a > 2 GiB model, which cannot be one message: no step of the sweep may need it as one
        monkeypatch.setattr(model_mod, "PROTOBUF_LIMIT", 1000)
    e = load_model(ext)
    for backend in ("serial", "processes"):
        got = run_sweep(e, spec, ctx, st, strategy="feed", backend=backend, workers=2 if backend == "processes" else None)
        assert got.groups == want.groups and got.state_exponent == want.state_exponent
    assert run_sweep(e, spec, ctx, st, strategy="rebuild").groups == run_sweep(m, spec, ctx, st, strategy="rebuild").groups
    assert run_sweep(e, spec, ctx, st).groups  # auto times a rebuilt session too
    if over_limit:
        with pytest.raises(BadModelError, match="larger than 2 GiB"):
            _ = e.bytes


def test_auto_does_not_build_a_second_copy_of_large_weights(state_model: Path, record: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgetqs.sensitivity.sweep as sweep_mod

    m = load_model(state_model)
    spec = infer_spec(m)
    ctx = select_contexts(read_record(record, spec), m, spec, 2)
    monkeypatch.setattr(sweep_mod, "AUTO_REBUILD_MAX_BYTES", 100)  # this model's 1 KiB of weights now count as large
    s = run_sweep(m, spec, ctx, ProbeSettings(horizon=3))
    assert s.strategy == "feed" and any("without timing a rebuilt session" in n for n in s.notes)
    assert run_sweep(m, spec, ctx, ProbeSettings(horizon=3), strategy="rebuild").strategy == "rebuild"  # asked for: still honoured
