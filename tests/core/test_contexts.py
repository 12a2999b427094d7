from __future__ import annotations

from pathlib import Path

import models
import numpy as np
import pytest

from edgetqs.core.contexts import read_record, select_contexts, spinup_contexts
from edgetqs.core.model import load_model
from edgetqs.core.rollout import SpecHints, infer_spec
from edgetqs.errors import BadInputError, ContextsError


def _state(tmp_path: Path):
    m = load_model(models.state_mlp(tmp_path / "m.onnx"))
    return m, infer_spec(m)


def test_npy_record_gives_k_evenly_spread_states(tmp_path: Path, record: Path) -> None:
    m, spec = _state(tmp_path)
    ctx = select_contexts(read_record(record, spec), m, spec, 5)
    assert ctx.arrays[0].shape == (5, 8)
    assert ctx.indices == (0, 50, 100, 149, 199)
    data = np.load(record)
    assert np.array_equal(ctx.arrays[0], data[list(ctx.indices)])
    again = select_contexts(read_record(record, spec), m, spec, 5)
    assert np.array_equal(again.arrays[0], ctx.arrays[0])  # deterministic


def test_disjoint_spans_do_not_overlap(tmp_path: Path, record: Path) -> None:
    m, spec = _state(tmp_path)
    rec = read_record(record, spec)
    a = select_contexts(rec, m, spec, 6, (0.0, 0.5))
    b = select_contexts(rec, m, spec, 6, (0.5, 1.0))
    assert max(a.indices) < 100 <= min(b.indices)


def test_csv_columns_are_variables_and_time_column_is_dropped(tmp_path: Path) -> None:
    m = load_model(models.window_mlp(tmp_path / "w.onnx", length=6, horizon=2, channels=3))
    spec = infer_spec(m)
    p = tmp_path / "s.csv"
    rows = ["time,temp,wind,pressure"] + [f"2020-01-01T{i:02d}:00,{i},{2 * i},{1000 + i}" for i in range(24)]
    p.write_text("\n".join(rows) + "\n")
    ctx = select_contexts(read_record(p, spec), m, spec, 4)
    assert ctx.variables == ("temp", "wind", "pressure")
    assert ctx.arrays[0].shape == (4, 6, 3)
    assert ctx.arrays[0][0, 0].tolist() == [0, 0, 1000]
    picked = select_contexts(read_record(p, spec, ["pressure", "temp", "wind"]), m, spec, 2)
    assert picked.variables == ("pressure", "temp", "wind")


def test_netcdf_variables_along_time(tmp_path: Path) -> None:
    import xarray as xr

    m = load_model(models.static_conv(tmp_path / "c.onnx", channels=2, size=6))
    spec = infer_spec(m, SpecHints(static=("mask",)))
    rng = np.random.default_rng(0)
    t = rng.standard_normal((30, 6, 6)).astype(np.float32)
    t[:, 0, 0] = np.nan  # a masked point
    ds = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), t), "z500": (("time", "lat", "lon"), rng.standard_normal((30, 6, 6)).astype(np.float32))}
    )
    p = tmp_path / "f.nc"
    ds.to_netcdf(p)
    # a masked point is refused, named, unless the user asks for a fill (it is missing at every step: only mean fills it)
    with pytest.raises(ContextsError, match=r"30 NaN value\(s\), the first at time step 0, variable 't2m' \(index \[0, 0, 0, 0\]\)"):
        read_record(p, spec)
    with pytest.raises(ContextsError, match="missing at every time step.*--fill mean"):
        read_record(p, spec, fill="ffill")
    rec = read_record(p, spec, fill="mean")
    assert rec.variables == ("t2m", "z500") and rec.arrays["x"].shape == (30, 2, 6, 6) and rec.filled == 30
    assert np.isfinite(rec.arrays["x"]).all()
    assert np.allclose(rec.arrays["x"][:, 0, 0, 0], np.nanmean(t))


def test_npz_with_statics_and_variable_names(tmp_path: Path) -> None:
    m = load_model(models.static_conv(tmp_path / "c.onnx"))
    spec = infer_spec(m, SpecHints(static=("mask",)))
    p = tmp_path / "c.npz"
    np.savez(p, record=np.zeros((10, 2, 6, 6), np.float32), mask=np.ones((1, 6, 6), np.float32), variables=np.array(["a", "b"]))
    ctx = select_contexts(read_record(p, spec), m, spec, 3)
    assert ctx.variables == ("a", "b") and ctx.statics["mask"].shape == (1, 6, 6)


def test_shape_mismatch_names_both_shapes(tmp_path: Path) -> None:
    m, spec = _state(tmp_path)
    p = tmp_path / "bad.npy"
    np.save(p, np.zeros((50, 5), np.float32))
    with pytest.raises(ContextsError, match=r"\[50, 5\].*\[N, 8\]"):
        select_contexts(read_record(p, spec), m, spec, 4)


def test_k_larger_than_the_record_allows(tmp_path: Path) -> None:
    m = load_model(models.window_mlp(tmp_path / "w.onnx", length=6))
    spec = infer_spec(m)
    p = tmp_path / "short.npy"
    np.save(p, np.zeros((10, 3), np.float32))
    with pytest.raises(ContextsError, match="at most 5 distinct windows of length 6"):
        select_contexts(read_record(p, spec), m, spec, 8)


@pytest.mark.parametrize("name, content", [("x.parquet", b"PAR1"), ("missing.npy", None)])
def test_unreadable_contexts_files(tmp_path: Path, name: str, content: bytes | None) -> None:
    m, spec = _state(tmp_path)
    p = tmp_path / name
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(BadInputError):
        read_record(p, spec)


def test_spinup_takes_states_from_the_models_own_trajectory(tmp_path: Path) -> None:
    m, spec = _state(tmp_path)
    ctx = spinup_contexts(m, spec, 4, seed=3, burn_in=20, spacing=5)
    assert ctx.arrays[0].shape == (4, 8) and "spin-up" in ctx.source
    assert np.isfinite(ctx.arrays[0]).all()
    assert np.array_equal(ctx.arrays[0], spinup_contexts(m, spec, 4, seed=3, burn_in=20, spacing=5).arrays[0])


def test_spinup_for_a_window_model_returns_windows(tmp_path: Path) -> None:
    m = load_model(models.window_mlp(tmp_path / "w.onnx", length=6, horizon=2, channels=3))
    spec = infer_spec(m)
    ctx = spinup_contexts(m, spec, 3, burn_in=10, spacing=4)
    assert ctx.arrays[0].shape == (3, 6, 3)
