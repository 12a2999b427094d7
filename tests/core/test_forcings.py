"""Forcing inputs (`edgetqs.core.forcings`): time features, solar elevation, declarations, and every rollout
that feeds them (host rollout, sweep, plan, convert, reference.npz and the on-device driver).

The toy models are x_{t+1} = a x_t + w0 sin(2 pi hour / 24) + w1 cos(2 pi hour / 24), in state and window form
(`tests/models.py`): the forcing changes every step, so a forcing fed at the wrong step or not at all shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import models
import numpy as np
import pytest
from typer.testing import CliRunner

from edgetqs import api
from edgetqs.cli import app
from edgetqs.core.forcings import Forcing, day_of_year, hour_of_day, parse_forcing, solar_elevation
from edgetqs.core.inputs import resolve, rollout_config
from edgetqs.core.project import load_project
from edgetqs.core.rollout import Rollout, float_reference
from edgetqs.errors import ContextsError, ProjectFileError, RolloutSpecError
from edgetqs.validation.reference import Reference

A, W = 0.9, (0.5, 0.2)
START = np.datetime64("2024-03-01T00:00", "s")


def _times(n: int, start: np.datetime64 = START) -> np.ndarray:
    return start + np.arange(n) * np.timedelta64(3600, "s")


def _csv(path: Path, n: int = 120, seed: int = 0, with_time: bool = True, extra: dict | None = None) -> Path:
    x = np.random.default_rng(seed).standard_normal(n)
    cols = {"time": _times(n).astype(str)} if with_time else {}
    cols |= {"x": [f"{v:.6f}" for v in x]} | {k: [f"{u:.6f}" for u in v] for k, v in (extra or {}).items()}
    lines = [",".join(cols)] + [",".join(str(cols[c][i]) for c in cols) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _tod(hours: np.ndarray) -> np.ndarray:
    return W[0] * np.sin(2 * np.pi * hours / 24) + W[1] * np.cos(2 * np.pi * hours / 24)


def _hand_state(x: np.ndarray, starts: tuple[int, ...], horizon: int) -> np.ndarray:
    """[T, K]: x_{t+1} = a x_t + forcing at the hour of x_t (the record starts at midnight)."""
    out = np.zeros((horizon, len(starts)))
    for j, s in enumerate(starts):
        v = float(x[s])
        for t in range(horizon):
            v = A * v + float(_tod(np.array((s + t) % 24)))
            out[t, j] = v
    return out


# ------------------------------------------------------------------ features


def test_hour_of_day_and_day_of_year_are_sin_cos_of_the_clock() -> None:
    t = np.array(["2024-05-05T06:00", "2024-05-05T00:00", "2024-05-05T18:00", "2024-05-05T12:00"], dtype="datetime64[s]")
    np.testing.assert_allclose(hour_of_day(t), [[1, 0], [0, 1], [-1, 0], [0, -1]], atol=1e-12)
    d = day_of_year(np.array(["2023-01-01T00:00", "2023-07-02T12:00"], dtype="datetime64[s]"))
    np.testing.assert_allclose(d[0], [0, 1], atol=1e-12)
    assert d[1, 1] < -0.9999  # half a year on: cos = -1


def test_solar_elevation_matches_pvlib_within_half_a_degree() -> None:
    pvlib = pytest.importorskip("pvlib")
    import pandas as pd

    rng = np.random.default_rng(0)
    secs = rng.integers(int(np.datetime64("1995-01-01", "s").astype(int)), int(np.datetime64("2045-01-01", "s").astype(int)), 400)
    times = secs.astype("datetime64[s]")
    worst = 0.0
    for lat, lon in [(36.1, -79.9), (64.8, -147.7), (-33.9, 151.2), (0.0, 0.0), (51.5, -0.1)]:
        ours = solar_elevation(times, lat, lon)
        ref = pvlib.solarposition.get_solarposition(pd.DatetimeIndex(times, tz="UTC"), lat, lon)["elevation"].to_numpy()
        worst = max(worst, float(np.abs(ours - ref).max()))
    assert worst < 0.5, worst
    assert worst < 0.05  # what the formula achieves (docstring): a regression would show here first


# ------------------------------------------------------------------ declarations


@pytest.mark.parametrize(
    "text", ["tod=hour_of_day", "f=hour_of_day+day_of_year@predicted", "g=column:ghi,temp_air+solar_elevation", "h=day_of_year"]
)
def test_forcing_text_round_trips(text: str) -> None:
    f = parse_forcing(text)
    assert isinstance(f, Forcing) and f.text() == text and parse_forcing(f.text()) == f


@pytest.mark.parametrize("text", ["tod", "tod=", "=hour_of_day", "tod=hour", "tod=column:", "tod=hour_of_day@later", "tod=column:a,,b"])
def test_bad_forcing_text_is_a_clear_error(text: str) -> None:
    with pytest.raises(RolloutSpecError, match="forcing"):
        parse_forcing(text)


def test_project_file_declaration_round_trips(tmp_path: Path) -> None:
    models.forced_state(tmp_path / "m.onnx")
    _csv(tmp_path / "r.csv")
    (tmp_path / "edgetqs.toml").write_text(
        'model = "m.onnx"\ncontexts = "r.csv"\nk = 3\n\n[rollout]\nforcing = ["tod=hour_of_day"]\nlatitude = 36\nlongitude = -79.9\n'
    )
    proj = load_project(tmp_path / "edgetqs.toml")
    inp = resolve(None, proj)
    assert inp.spec.forcings == (parse_forcing("tod=hour_of_day"),) and (inp.spec.latitude, inp.spec.longitude) == (36.0, -79.9)
    assert rollout_config(inp.spec).forcing == proj.rollout.forcing  # what a plan redoes the rollout with
    (tmp_path / "bad.toml").write_text('[rollout]\nforcing = ["tod=hour"]\n')
    with pytest.raises(ProjectFileError, match="rollout.forcing.*source 'hour'"):
        load_project(tmp_path / "bad.toml")
    (tmp_path / "far.toml").write_text("[rollout]\nlatitude = 95.0\n")
    with pytest.raises(ProjectFileError, match="latitude"):
        load_project(tmp_path / "far.toml")


# ------------------------------------------------------------------ host rollouts


def test_state_rollout_feeds_the_time_of_day_each_step(tmp_path: Path) -> None:
    p = models.forced_state(tmp_path / "m.onnx")
    rec = _csv(tmp_path / "r.csv")
    inp = resolve(p, None, contexts=rec, k=4, rollout={"forcing": ("tod=hour_of_day",)})
    got = float_reference(inp.model, inp.spec, inp.contexts, 30).steps[0][..., 0]
    x = np.loadtxt(rec, delimiter=",", skiprows=1, usecols=1)
    # 30 steps run past the record's end for the last context: the timestamps continue hourly
    assert max(inp.contexts.indices) + 30 > 120
    np.testing.assert_allclose(got, _hand_state(x, inp.contexts.indices, 30), rtol=1e-5, atol=1e-5)
    # the same record as an .npz with a datetime64 'time' array gives the same trajectory
    np.savez(tmp_path / "r.npz", record=x[:, None].astype(np.float32), time=_times(120))
    inp2 = resolve(p, None, contexts=tmp_path / "r.npz", k=4, rollout={"forcing": ("tod=hour_of_day",)})
    np.testing.assert_allclose(float_reference(inp2.model, inp2.spec, inp2.contexts, 30).steps[0][..., 0], got, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("align", ["predicted", "input"])
def test_window_rollout_reads_the_predicted_or_the_window_rows(tmp_path: Path, align: str) -> None:
    L, H = 6, 3
    p = models.forced_window(tmp_path / "w.onnx", length=L, h=H, rows=H if align == "predicted" else L)
    rec = _csv(tmp_path / "r.csv")
    decl = "tod=hour_of_day" + ("@predicted" if align == "predicted" else "")
    inp = resolve(p, None, contexts=rec, k=3, rollout={"forcing": (decl,)})
    assert inp.spec.mode == "window"
    got = float_reference(inp.model, inp.spec, inp.contexts, 5).steps[0][..., 0]  # [T, K, H]
    x = np.loadtxt(rec, delimiter=",", skiprows=1, usecols=1)
    for j, s in enumerate(inp.contexts.indices):
        last = float(x[s + L - 1])
        for t in range(5):
            # predicted: rows s + L + tH + h; input: the last H rows of the window, s + tH + L - H + h
            first = s + L + t * H if align == "predicted" else s + t * H + L - H
            want = A * last + _tod(np.arange(first, first + H) % 24)
            np.testing.assert_allclose(got[t, j], want, rtol=1e-5, atol=1e-5)
            last = float(got[t, j, -1])


def test_a_rollout_without_forcing_values_is_refused(tmp_path: Path) -> None:
    p = models.forced_state(tmp_path / "m.onnx")
    inp = resolve(p, None, contexts=_csv(tmp_path / "r.csv"), k=3, rollout={"forcing": ("tod=hour_of_day",)})
    with pytest.raises(RolloutSpecError, match=r"forcing input\(s\) \['tod'\] need values"):
        Rollout(inp.model, inp.spec, inp.contexts.statics).run(inp.contexts.arrays, 4)
    short = inp.contexts.forcing_arrays(2)["tod"]
    with pytest.raises(RolloutSpecError, match=r"has values \[3, 2, 2\].*\[3, >=4"):
        Rollout(inp.model, inp.spec, inp.contexts.statics, forcings={"tod": short}).run(inp.contexts.arrays, 4)


def test_wrong_or_missing_forcings_are_clear_errors(tmp_path: Path) -> None:
    p = models.forced_state(tmp_path / "m.onnx")
    rec = _csv(tmp_path / "r.csv", extra={"ghi": np.linspace(0, 1, 120)})  # ghi is state unless a forcing reads it
    with pytest.raises(ContextsError, match=r"gives \[4\] per step.*input 'tod' takes \[B, 2\]"):
        resolve(p, None, contexts=_csv(tmp_path / "x.csv"), k=3, rollout={"forcing": ("tod=hour_of_day+day_of_year",)})
    with pytest.raises(ContextsError, match="forcing column 'rain' is not in"):
        resolve(p, None, contexts=rec, k=3, rollout={"forcing": ("tod=column:rain,ghi",)})
    with pytest.raises(ContextsError, match="has no timestamps"):
        resolve(p, None, contexts=_csv(tmp_path / "nt.csv", with_time=False), k=3, rollout={"forcing": ("tod=hour_of_day",)})
    with pytest.raises(RolloutSpecError, match="solar_elevation, which needs the site"):
        resolve(p, None, contexts=rec, k=3, rollout={"forcing": ("tod=solar_elevation+column:ghi",)})
    with pytest.raises(RolloutSpecError, match="'nope', which is not an input"):
        resolve(p, None, contexts=rec, k=3, rollout={"forcing": ("nope=hour_of_day",)})
    with pytest.raises(ContextsError, match="spin-up from noise has none"):
        resolve(p, None, spinup=True, k=3, rollout={"forcing": ("tod=hour_of_day",)})
    # a column ends with the record: a rollout past it is refused, naming the row and the way out
    inp = resolve(p, None, contexts=rec, k=3, rollout={"forcing": ("tod=column:ghi,ghi",)})
    with pytest.raises(ContextsError, match=r"ends at row 119.*--span"):
        float_reference(inp.model, inp.spec, inp.contexts, 10)
    # columns and solar elevation at a site: the values are the record's and the formula's
    inp = resolve(
        p,
        None,
        contexts=rec,
        k=3,
        span="0:0.9",  # the advice above, followed: room for the horizon before the record ends
        rollout={"forcing": ("tod=solar_elevation+column:ghi",), "latitude": 36.1, "longitude": -79.9},
    )
    f = inp.contexts.forcing_arrays(4)["tod"]
    rows = np.array(inp.contexts.indices)[:, None] + np.arange(4)
    np.testing.assert_allclose(f[..., 1], np.linspace(0, 1, 120)[rows], atol=1e-5)
    np.testing.assert_allclose(f[..., 0], solar_elevation(_times(120)[rows], 36.1, -79.9), atol=1e-4)


def test_undeclared_input_names_it_and_the_advice_works(tmp_path: Path) -> None:
    p = models.forced_state(tmp_path / "m.onnx")
    rec = _csv(tmp_path / "r.csv")
    with pytest.raises(RolloutSpecError) as e:
        resolve(p, None, contexts=rec, k=3)
    assert "input tod[?, 2] is neither fed back nor static nor a forcing" in str(e.value) and "--forcing INPUT=SOURCE" in str(e.value)
    assert e.value.hint is not None and e.value.hint.args == ("--forcing", "tod=hour_of_day")
    # a window model whose forcing has the predicted steps' rows is advised @predicted
    w = models.forced_window(tmp_path / "w.onnx", length=6, h=3)
    with pytest.raises(RolloutSpecError) as e:
        resolve(w, None, contexts=rec, k=3)
    assert e.value.hint is not None and e.value.hint.args == ("--forcing", "tod=hour_of_day@predicted")
    inp = resolve(w, None, contexts=rec, k=3, rollout={"forcing": (e.value.hint.args[1],)})  # the advice, followed
    assert float_reference(inp.model, inp.spec, inp.contexts, 3).first_nonfinite is None


def test_cli_forcing_option_scores_and_records_the_declaration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETQS_CACHE_DIR", str(tmp_path / "cache"))
    p = models.forced_state(tmp_path / "m.onnx")
    rec = _csv(tmp_path / "r.csv")
    args = ["score", str(p), "-c", str(rec), "-k", "4", "-T", "6", "-q", "-o", str(tmp_path / "s.json")]
    r = CliRunner().invoke(app, [*args, "--forcing", "tod=hour_of_day"])
    assert r.exit_code == 0, r.output
    spec = json.loads((tmp_path / "s.json").read_text())["rollout"]
    assert spec["forcings"] == [{"input": "tod", "sources": [{"kind": "hour_of_day", "columns": []}], "align": "input"}]
    bad = subprocess.run(
        [sys.executable, "-m", "edgetqs.cli", *args, "--forcing", "tod=hour"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "220"},
    )
    err = " ".join(bad.stderr.split())
    assert bad.returncode == 2 and err.startswith("error:") and "source 'hour' is not one of" in err and "Traceback" not in err


# ------------------------------------------------------------------ the whole chain


def test_score_plan_convert_and_device_check_feed_the_forcings(tmp_path: Path) -> None:
    """The sweep, the plan's re-scoring search, the conversion's host check, GPTQ's closed-loop capture and the
    on-device driver all feed the forcing: reference.npz carries it [K, T, 2] and the driver reproduces the host."""
    p = models.forced_state(tmp_path / "m.onnx")
    rec = _csv(tmp_path / "r.csv", n=200)
    (tmp_path / "edgetqs.toml").write_text(
        f'model = "m.onnx"\ncontexts = "{rec.name}"\nk = 4\n\n[rollout]\nforcing = ["tod=hour_of_day"]\n'
    )
    proj = tmp_path / "edgetqs.toml"
    s = api.score(project=proj, horizon=6, cache=False)
    assert s.rollout.forcings and all(g.gamma is not None for g in s.groups)
    plan = api.plan(s, target="raspberrypi", model=p, ratio=0.5, runtime="ort", project=proj, refine=True, refine_rollouts=20)
    r = api.convert(p, plan, "ort", tmp_path / "ort", project=proj)
    assert r.all_match
    gptq = api.plan(s, target="raspberrypi", model=p, ratio=0.5, runtime="ort", project=proj, rounding="gptq")
    assert api.convert(p, gptq, "ort", tmp_path / "gptq", project=proj).all_match
    c = api.check(tmp_path / "ort" / r.artifact, project=proj, horizon=12, output=tmp_path / "chk")
    assert c.passed, c.verdict
    ref = Reference.load(tmp_path / "chk" / "reference.npz")
    assert set(ref.forcings) == {"tod"} and ref.forcings["tod"].shape == (4, 12, 2)
    starts = ref.meta.contexts.start_indices
    np.testing.assert_allclose(ref.forcings["tod"], hour_of_day(_times(200)[np.array(starts)[:, None] + np.arange(12)]), atol=1e-6)
    # the float trajectory in the reference is the hand-computed one
    x = np.loadtxt(rec, delimiter=",", skiprows=1, usecols=1)
    np.testing.assert_allclose(ref.float_traj["y"][..., 0], _hand_state(x, starts, 12), rtol=1e-5, atol=1e-5)
    # a device check against the stored reference alone (no float model, no record) passes: the forcing travels in it
    c2 = api.check(tmp_path / "ort" / r.artifact, reference=tmp_path / "chk" / "reference.npz")
    assert c2.passed and c2.verdict == c.verdict, c2.verdict


def _forced_project(tmp_path: Path, n: int = 200) -> tuple[Path, Path]:
    p = models.forced_state(tmp_path / "m.onnx")
    rec = _csv(tmp_path / "r.csv", n=n)
    (tmp_path / "edgetqs.toml").write_text(
        f'model = "m.onnx"\ncontexts = "{rec.name}"\nk = 4\n\n[rollout]\nforcing = ["tod=hour_of_day"]\n'
    )
    return p, tmp_path / "edgetqs.toml"


@pytest.mark.slow
@pytest.mark.qemu
def test_emulated_pi_check_feeds_the_forcings_from_the_reference(tmp_path: Path) -> None:
    """The aarch64 driver on qemu-pi4 reads forcing__tod from inputs.npz and reproduces the host trajectory."""
    p, proj = _forced_project(tmp_path)
    s = api.score(project=proj, horizon=6, cache=False)
    plan = api.plan(s, target="raspberrypi", model=p, ratio=0.5, runtime="ort", project=proj)
    r = api.convert(p, plan, "ort", tmp_path / "ort", project=proj)
    c = api.check(tmp_path / "ort" / r.artifact, project=proj, device="qemu-pi4", horizon=12)
    assert c.passed and c.machine == "aarch64", c.verdict


@pytest.mark.slow
@pytest.mark.tflite
@pytest.mark.parametrize("fmt", ["tflite", "tflm"])
def test_tflite_calibration_rows_carry_the_forcing(tmp_path: Path, fmt: str) -> None:
    """Full-integer calibration records every input of the closed loop, the forcing included; the check PASSes."""
    if fmt == "tflm":
        pytest.importorskip("tflite_micro")
    p, proj = _forced_project(tmp_path)
    s = api.score(project=proj, horizon=6, cache=False)
    target = "esp32s3" if fmt == "tflm" else "raspberrypi"
    plan = api.plan(s, target=target, model=p, runtime=fmt, project=proj)
    r = api.convert(p, plan, fmt, tmp_path / fmt, project=proj)
    assert r.all_match
    # full-integer int8 (tflm) of a state whose forced cycle spans about +-3 record spreads: its resolution, accumulated
    # by the 0.9-damped loop, reaches 0.3 by lead 8, over esp32s3's 0.2. This test is about the calibration rows and the
    # runners taking the forcing (without it calibration has no value for 'tod'); when each step's value is fed is
    # tested exactly against hand-computed trajectories above.
    c = api.check(tmp_path / fmt / r.artifact, project=proj, horizon=12, tolerance=0.5 if fmt == "tflm" else None)
    assert c.passed, c.verdict


@pytest.mark.parametrize("strategy", ["feed", "rebuild"])
def test_parallel_sweep_workers_get_the_forcings(tmp_path: Path, strategy: str) -> None:
    """Worker processes receive the forcing values with the job: the same scores as a serial sweep, for both strategies
    (a share of the contexts reads its own rows of them)."""
    p, proj = _forced_project(tmp_path)
    serial = api.score(project=proj, horizon=6, cache=False, strategy=strategy)
    parallel = api.score(project=proj, horizon=6, cache=False, strategy=strategy, backend="processes", workers=2)
    assert [g.gamma for g in parallel.groups] == [g.gamma for g in serial.groups]
    assert all(g.gamma is not None for g in serial.groups)


def test_the_fed_back_input_cannot_be_a_forcing(tmp_path: Path) -> None:
    p = models.forced_state(tmp_path / "m.onnx")
    rec = _csv(tmp_path / "r.csv")
    with pytest.raises(RolloutSpecError, match="no input is left to feed back"):
        resolve(p, None, contexts=rec, k=3, rollout={"forcing": ("x=column:x", "tod=hour_of_day")})
    with pytest.raises(RolloutSpecError, match="'x' is declared more than once"):
        resolve(p, None, contexts=rec, k=3, rollout={"state": ("x=y",), "forcing": ("x=column:x", "tod=hour_of_day")})
