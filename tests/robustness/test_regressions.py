"""One regression test per defect of issue 12 (tracebacks, hangs, silent wrong results, lost data), each run
through the command line as a user would, in the workspace of `robust` (a model, a record, and a successful
run of every command). Each checks exit status 2, one ``error:`` line naming the problem, no traceback and
nothing new or changed on disk, unless it says otherwise.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import robust
from onnx import TensorProto, helper, numpy_helper

IS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> robust.Workspace:
    return robust.build_workspace(tmp_path_factory.mktemp("regress") / "ws")


def refused(ws: robust.Workspace, *argv: str, words: str | tuple[str, ...] = (), files: tuple = (), limit: float = 60.0) -> str:
    """Run ``edgetqs ARGV`` (after making ``files``); assert a clean error that contains ``words``; return the line."""
    o = robust.run_case(ws, robust.Case("regression", tuple(argv), tuple(files)), timeout=limit)
    assert o.kind == "clean", str(o)
    line = o.result.error_lines[0]
    for w in (words,) if isinstance(words, str) else words:
        assert w in line, line
    return line


def ok(ws: robust.Workspace, *argv: str, limit: float = 300.0) -> robust.Result:
    r = robust.run_cli(list(argv), ws.root, timeout=limit)
    assert r.rc in (0, 1) and not r.error_lines, r.stderr[-800:]
    return r


def _csv_with(ws: robust.Workspace, name: str, cells: dict[tuple[int, int], float]) -> Path:
    df = pd.read_csv(ws.root / "rec.csv")
    for (i, j), v in cells.items():
        df.iloc[i, j] = v
    p = ws.root / "in" / name
    p.parent.mkdir(exist_ok=True)
    df.to_csv(p, index=False)
    return p


# ----------------------------------------------------------------- 1. writes and planted links


def test_1_a_link_at_the_old_fixed_temp_name_is_not_followed(ws: robust.Workspace) -> None:
    (ws.root / "out").mkdir()
    os.symlink("../user.txt", ws.root / "out" / "s.json.tmp")
    os.symlink("../user.txt", ws.root / "out" / ".s.json.tmp")
    before = (ws.root / "user.txt").read_bytes()
    ok(ws, "score", "m.onnx", "-c", "rec.csv", "-k", "3", "-T", "4", "-q", "-o", "out/s.json")
    assert (ws.root / "user.txt").read_bytes() == before
    assert json.loads((ws.root / "out" / "s.json").read_text())["horizon"] == 4
    ws.restore()


@pytest.mark.parametrize("argv", [["score", "--plot", "out/p.png"], ["check"]], ids=["score-plot", "check-png"])
def test_1_a_link_at_an_output_name_is_refused_and_its_target_untouched(ws: robust.Workspace, argv: list[str]) -> None:
    if argv[0] == "score":
        full = [*robust.BASES["score"], "--plot", "out/p.png"]
        link = "out/p.png"
    else:
        full = robust.BASES["check"]
        link = "out/chk/check.png"
    before = (ws.root / "user.txt").read_bytes()
    refused(ws, *full, words=("symbolic link", link), files=((link, robust.Link("../" * link.count("/") + "user.txt")),))
    assert (ws.root / "user.txt").read_bytes() == before


@pytest.mark.skipif(not IS_ROOT, reason="making a character device needs root")
def test_1_a_character_device_as_output_is_refused_and_kept(ws: robust.Workspace) -> None:
    dev = ws.root / "full"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # /dev/full's numbers
    except OSError as exc:
        pytest.skip(f"mknod not allowed: {exc}")
    try:
        st = os.lstat(dev)
        for argv in (["score", "m.onnx", "-c", "rec.csv", "-k", "3", "-T", "4", "-q", "-o", "full"], ["score", "-o", "/dev/full"]):
            r = robust.run_cli(argv, ws.root)
            assert r.rc == 2 and "character device" in r.error_lines[0], r.stderr
        after = os.lstat(dev)
        assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (st.st_ino, st.st_rdev)
        assert stat.S_ISCHR(os.lstat("/dev/full").st_mode)
    finally:
        dev.unlink()


# ------------------------------------------------------------------------------ 2. NaN and Inf


def test_2_nan_and_inf_cells_in_a_csv_are_refused_by_score(ws: robust.Workspace) -> None:
    p = _csv_with(ws, "nan.csv", {(5, 2): np.nan, (9, 2): np.inf})
    line = refused(ws, "score", "m.onnx", "-c", str(p), "-k", "3", "-T", "4", "-q", "-o", "s.json")
    assert "1 NaN and 1 Inf" in line and "time step 5, variable 'v2'" in line and "--fill" in line
    ws.restore()


def test_2_the_same_record_is_refused_by_every_command_with_the_same_words(ws: robust.Workspace) -> None:
    p = _csv_with(ws, "nan.csv", {(5, 2): np.nan})
    c = str(p.relative_to(ws.root))
    files = ((c, p.read_text()),)
    want = ("contexts 'in/nan.csv' holds 1 NaN value(s), the first at time step 5, variable 'v2'",)
    for argv in (
        ["score", "m.onnx", "-c", c, "-k", "3", "-T", "4", "-q", "-o", "out/s.json"],
        ["plan", "scores.json", "-t", "x86-64", "--model", "m.onnx", "--evaluate", "-c", c, "-k", "3", "-q", "-o", "out/p.json"],
        ["convert", "m.onnx", "-p", "plan.json", "-f", "ort", "-c", c, "-k", "3", "-o", "out/art"],
        ["check", "art/m.ort.onnx", "-m", "m.onnx", "-c", c, "-k", "3", "-T", "4", "-o", "out/chk"],
        ["build", "m.onnx", "-t", "x86-64", "--ratio", "0.25", "-c", c, "-k", "3", "-d", "local", "-o", "out/dist"],
    ):
        refused(ws, *argv, words=want, files=files)


def test_2_build_with_nan_cells_no_longer_flips_the_verdict_silently(ws: robust.Workspace) -> None:
    """The issue's case: the NaN record FAILed where the clean one PASSed, with no word said. Now it is refused,
    and with --fill the build runs and says how many values were filled."""
    p = _csv_with(ws, "nan.csv", {(5, 2): np.nan, (6, 2): np.inf})
    argv = ["build", "m.onnx", "-t", "x86-64", "--ratio", "0.25", "-c", str(p), "-k", "3", "-d", "local", "-o", "out/dist"]
    refused(ws, *argv, words="1 NaN and 1 Inf")
    r = ok(ws, *argv, "--fill", "interpolate")
    assert "2 NaN/Inf value(s) in" in r.stderr and "filled (interpolate)" in r.stderr
    ws.restore()


def test_2_convert_refuses_contexts_with_nan_instead_of_a_nonfinite_host_rollout(ws: robust.Workspace) -> None:
    data = np.load(ws.root / "rec.npy")
    data[0, 0] = np.nan
    buf = io.BytesIO()
    np.savez(buf, record=data)
    refused(
        ws, "convert", "m.onnx", "-p", "plan.json", "-f", "ort", "-c", "in/nan.npz", "-k", "3", "-o", "out/art",
        words="1 NaN value(s), the first at time step 0", files=(("in/nan.npz", buf.getvalue()),),
    )  # fmt: skip


def test_2_fill_methods_give_the_documented_values(ws: robust.Workspace) -> None:
    from edgetqs.core.contexts import read_record
    from edgetqs.core.model import load_model
    from edgetqs.core.rollout import infer_spec

    spec = infer_spec(load_model(ws.root / "m.onnx"))
    p = _csv_with(ws, "gaps.csv", {(0, 1): np.nan, (4, 1): np.nan, (5, 1): np.inf})
    col = pd.read_csv(ws.root / "rec.csv")["v1"].to_numpy(np.float32)
    f = read_record(p, spec, fill="ffill").arrays["x"][:, 1]
    assert f[0] == col[1] and f[4] == col[3] and f[5] == col[3]  # a leading gap takes the first value after it
    i = read_record(p, spec, fill="interpolate").arrays["x"][:, 1]
    assert np.isclose(i[4], col[3] + (col[6] - col[3]) / 3) and np.isclose(i[5], col[3] + 2 * (col[6] - col[3]) / 3) and i[0] == col[1]
    m = read_record(p, spec, fill="mean").arrays["x"][:, 1]
    good = np.delete(col, [0, 4, 5])
    assert np.isclose(m[0], good.mean()) and np.isclose(m[5], good.mean())
    assert read_record(p, spec, fill="mean").filled == 3
    ws.restore()


def test_2_fill_from_the_project_file_and_a_premade_contexts_file_without_a_time_axis(ws: robust.Workspace) -> None:
    _csv_with(ws, "nan.csv", {(5, 2): np.nan})
    proj = {**robust.PROJECT_BASE, "model": "../m.onnx", "contexts": "nan.csv", "fill": "ffill"}  # paths: relative to the file
    robust._make(ws.root, (("in/p.toml", robust.toml_dumps(proj)),))
    r = ok(ws, "score", "--project", "in/p.toml", "-q", "-o", "out/s.json")
    assert "1 NaN/Inf value(s)" in r.stderr and "filled (ffill)" in r.stderr
    assert any("filled (ffill)" in n for n in json.loads((ws.root / "out" / "s.json").read_text())["notes"])
    ws.restore()
    data = np.load(ws.root / "rec.npy")[:4].copy()
    data[1, 1] = np.nan
    buf = io.BytesIO()
    np.savez(buf, contexts=data)
    refused(
        ws, "score", "m.onnx", "-c", "in/c.npz", "-k", "3", "-q", "-o", "out/s.json", "--fill", "ffill",
        words="no time axis", files=(("in/c.npz", buf.getvalue()),),
    )  # fmt: skip


@pytest.mark.skipif(not Path("/usr/share/ncarg/data/cdf/Pstorm.cdf").exists(), reason="needs Debian's libncarg-data (the blizzard fields)")
def test_2_the_real_blizzard_fields_are_refused_then_filled_with_mean(ws: robust.Workspace, tmp_path: Path) -> None:
    """The 1996 blizzard NetCDF fields have 224 masked points per step in each field (a land mask, the same at every
    step): the reader used to fill them with the mean without a word. Now every command refuses them, naming
    the first one, and ``--fill mean`` (the only method that can fill a point missing at every step) fills them.
    The bundled example's contexts.npz was filled this way when it was made (scripts/train_examples.py)."""
    import xarray as xr

    from edgetqs.core.contexts import read_record
    from edgetqs.core.model import load_model
    from edgetqs.core.rollout import SpecHints, infer_spec
    from edgetqs.errors import ContextsError
    from edgetqs.examples import example_path

    src = Path("/usr/share/ncarg/data/cdf")
    fields = {}
    for f, var, name in (("Pstorm.cdf", "p", "psl"), ("Tstorm.cdf", "t", "t2m"), ("Ustorm.cdf", "u", "u10"), ("Vstorm.cdf", "v", "v10"),
                         ("U500storm.cdf", "u", "u500"), ("V500storm.cdf", "v", "v500")):  # fmt: skip
        with xr.open_dataset(src / f) as ds:
            fields[name] = ds[var].load()
    nc = tmp_path / "storm.nc"
    xr.Dataset(fields).to_netcdf(nc)
    model = example_path("blizzard") / "model.onnx"
    argv = ["score", str(model), "-c", str(nc), "--static", "mask", "-k", "3", "-T", "2", "-q", "-o", str(tmp_path / "s.json")]
    line = refused(ws, *argv, words="89,872 NaN value(s), the first at time step 0, variable 'psl'")
    assert "--fill" in line
    spec = infer_spec(load_model(model), SpecHints(static=("mask",)))
    with pytest.raises(ContextsError, match="missing at every time step.*--fill mean"):
        read_record(nc, spec, fill="ffill")
    rec = read_record(nc, spec, fill="mean")
    x = rec.arrays["x"]
    assert x.shape == (64, 6, 33, 36) and np.isfinite(x).all() and rec.filled == 89_872
    assert np.isclose(x[0, 0][np.isnan(fields["psl"].values[0])][0], np.nanmean(fields["psl"].values), rtol=1e-5)


# ------------------------------------------------------------------------------------ 3. cache


def _cache_entry(ws: robust.Workspace, argv: list[str]) -> Path:
    """The cache entry ``argv`` reuses (the workspace scored with these options when it was made)."""
    r = ok(ws, *argv)
    assert "reusing scores from " in r.stderr, r.stderr
    return Path(r.stderr.split("reusing scores from ", 1)[1].split()[0])


TAMPER = {
    "gains x 1e6": lambda d: [g.update(gain=g["gain"] * 1e6) for g in d["groups"] if g["gain"]],
    "n_params 1e18": lambda d: d["groups"][0].update(n_params=10**18),
    "model_sha256": lambda d: d.update(model_sha256="0" * 64),
    "groups empty": lambda d: d.update(groups=[]),
    "unknown group": lambda d: d["groups"][0].update(name="nosuch"),
    "string gamma": lambda d: d["groups"][0].update(gamma="high"),
    "nan gamma": lambda d: d["groups"][0].update(gamma=float("nan")),
    "negative eps": lambda d: d["groups"][0].update(eps=-1.0),
    "short curve": lambda d: d["groups"][0].update(gamma_curve=d["groups"][0]["gamma_curve"][:-1]),
    "diverged step": lambda d: d["groups"][0].update(diverged_step=999),
    "contexts_sha256": lambda d: d.update(contexts_sha256="f" * 64),
    "settings": lambda d: d["settings"].update(seed=99),
    "rollout": lambda d: d["rollout"].update(increment=True),
    "horizon": lambda d: d.update(horizon=5),
    "schema_version": lambda d: d.update(schema_version=1),
    "whole file []": None,
    "whole file null": None,
    "not JSON": None,
}


@pytest.mark.parametrize("field", list(TAMPER))
def test_3_a_tampered_cache_entry_is_rescored_with_a_note(ws: robust.Workspace, field: str) -> None:
    argv = ["score", "m.onnx", "-c", "rec.csv", "-k", "3", "-T", "4", "-o", "out/s.json"]
    fresh = json.loads((ws.root / "scores.json").read_text())
    entry = _cache_entry(ws, argv)
    d = json.loads(entry.read_text())
    if field == "whole file []":
        entry.write_text("[]")
    elif field == "whole file null":
        entry.write_text("null")
    elif field == "not JSON":
        entry.write_bytes(b"\xff{")
    else:
        TAMPER[field](d)
        entry.write_text(json.dumps(d))
    r = ok(ws, *argv)
    assert "were not reused" in r.stderr and "scoring again" in r.stderr, r.stderr
    got = json.loads((ws.root / "out" / "s.json").read_text())
    assert [(g["name"], g["gamma"], g["gain"], g["n_params"]) for g in got["groups"]] == [
        (g["name"], g["gamma"], g["gain"], g["n_params"]) for g in fresh["groups"]
    ]
    again = ok(ws, *argv[:-2], "-o", "out/s2.json")  # the recomputed entry replaced the tampered one
    assert "reusing scores from" in again.stderr
    ws.restore()


def test_3_plan_checks_a_scores_file_against_the_model(ws: robust.Workspace) -> None:
    d = json.loads((ws.root / "scores.json").read_text())
    d["groups"][0]["n_params"] = 10**18
    refused(
        ws, "plan", "in/s.json", "-t", "x86-64", "--model", "m.onnx", "-q", "-o", "out/p.json",
        words="wrong parameter count", files=(("in/s.json", json.dumps(d)),),
    )  # fmt: skip


# ---------------------------------------------------------------------- 5. unbounded values


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["score", "m.onnx", "-c", "rec.csv", "-T", "1000000000"], "horizon 1000000000"),
        (["score", "m.onnx", "-c", "rec.csv", "-T", "auto", "--max-horizon", "1000000000"], "max horizon 1000000000"),
        (["convert", "m.onnx", "-p", "plan.json", "-f", "ort", "-T", "1000000000", "-o", "out/a"], "horizon 1000000000"),
        (["check", "art/m.ort.onnx", "-m", "m.onnx", "-c", "rec.csv", "-T", "1000000000", "-o", "out/c"], "horizon 1000000000"),
        (["score", "m.onnx", "-c", "rec.csv", "-k", "1000000000"], "k=1000000000"),
        (["score", "m.onnx", "-c", "rec.csv", "--workers", "1000000"], "1000000"),
    ],
    ids=["score-T", "max-horizon", "convert-T", "check-T", "k", "workers"],
)
def test_5_unbounded_values_are_refused_at_once(ws: robust.Workspace, argv: list[str], words: str) -> None:
    t0 = time.perf_counter()
    refused(ws, *argv, words=words, limit=60)
    assert time.perf_counter() - t0 < 30


def test_5_a_target_horizon_and_a_project_horizon_of_huge_values_are_refused(ws: robust.Workspace) -> None:
    t = robust.target_base()
    t["validation"]["horizon"] = 1_000_000_000
    refused(
        ws,
        "plan",
        "scores.json",
        "--model",
        "m.onnx",
        "-t",
        "in/t.toml",
        "-q",
        words="validation.horizon",
        files=(("in/t.toml", robust.toml_dumps(t)),),
    )
    p = {**robust.PROJECT_BASE, "score": {"horizon": 9223372036854775807}}
    refused(
        ws,
        "score",
        "--project",
        "in/p.toml",
        "-q",
        "-o",
        "out/s.json",
        words="horizon 9223372036854775807",
        files=(("in/p.toml", robust.toml_dumps(p)),),
    )


# -------------------------------------------------------------------- 6. build vs plan values


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [("--budget", "0", "size '0'"), ("--ratio", "0", "ratio 0.0"), ("--ratio", "-1", "ratio -1.0"), ("--ratio", "2", "ratio 2.0")],
)
def test_6_build_refuses_the_budgets_plan_refuses(ws: robust.Workspace, flag: str, value: str, words: str) -> None:
    refused(ws, "build", "m.onnx", "-t", "x86-64", flag, value, "-c", "rec.csv", "-k", "3", "-d", "local", "-o", "out/dist", words=words)
    refused(ws, "plan", "scores.json", "-t", "x86-64", "--model", "m.onnx", flag, value, "-q", "-o", "out/p.json", words=words)


# ---------------------------------------------------------------------- 7. names become paths


def test_7_a_device_name_with_a_path_is_refused(ws: robust.Workspace) -> None:
    d = {**robust.DEVICE_BASES["local"], "name": "x/../../../../escaped"}
    refused(
        ws,
        *robust.BASES["check"][:-2],
        "-d",
        "in/d.toml",
        "-o",
        "out/chk",
        words=("in/d.toml", "'name'"),
        files=(("in/d.toml", robust.toml_dumps(d)),),
    )
    assert not list(ws.root.parent.parent.glob("**/escaped*"))


@pytest.mark.parametrize("kind", ["target", "project"])
def test_7_a_target_or_project_name_with_a_slash_is_refused(ws: robust.Workspace, kind: str) -> None:
    if kind == "target":
        t = {**robust.target_base(), "name": "a/b"}
        refused(
            ws,
            "plan",
            "scores.json",
            "--model",
            "m.onnx",
            "-t",
            "in/t.toml",
            "-q",
            words="'name'",
            files=(("in/t.toml", robust.toml_dumps(t)),),
        )
    else:
        p = {**robust.PROJECT_BASE, "name": "a/b"}
        refused(ws, "score", "--project", "in/p.toml", "-q", words="'name'", files=(("in/p.toml", robust.toml_dumps(p)),))


def test_7_a_project_file_that_shadows_a_shipped_device_is_announced(ws: robust.Workspace) -> None:
    dev = {**robust.DEVICE_BASES["local"], "name": "qemu-pi4"}
    robust._make(ws.root, (("devices/qemu-pi4.toml", robust.toml_dumps(dev)),))
    r = ok(ws, "check", "art/m.ort.onnx", "-r", "chk/reference.npz", "-d", "qemu-pi4", "-o", "out/chk")
    assert "device 'qemu-pi4' comes from" in r.stderr and "shadows" in r.stderr
    ws.restore()


# --------------------------------------------------------------------------------- 8. markup


def test_8_user_text_is_never_read_as_markup(ws: robust.Workspace) -> None:
    assert "'[/bold]x.onnx'" in refused(ws, "score", "[/bold]x.onnx", "-c", "rec.csv")
    assert "'[/]'" in refused(ws, "plan", "scores.json", "--model", "m.onnx", "--target", "[/]")
    line = refused(ws, "score", "--project", "in/p.toml", files=(("in/p.toml", "[foo]\nx = 1\n"),))
    assert "unknown key 'foo'" in line
    line = refused(ws, "score", "m.onnx", "-c", "[link=x]y[/link].npy")
    assert "'[link=x]y[/link].npy'" in line


# --------------------------------------------------------------------- 9. uncaught exceptions


def _raw_model(path: Path, op: str, in_type: int = TensorProto.FLOAT) -> Path:
    w = numpy_helper.from_array(np.eye(8, dtype=np.float32), "w.weight")
    nodes = [helper.make_node("MatMul", ["x", "w.weight"], ["h"]), helper.make_node(op, ["h"], ["y"])]
    if in_type != TensorProto.FLOAT:
        nodes = [helper.make_node("MatMul", ["x", "w.weight"], ["y"])]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", in_type, ["B", 8])], [helper.make_tensor_value_info("y", in_type, ["B", 8])], [w]
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))  # no checker: the point is a graph onnxruntime refuses
    return path


@pytest.mark.parametrize("case", ["unknown op", "int32 input"])
def test_9_onnxruntime_refusing_the_model_is_one_error_line(ws: robust.Workspace, case: str) -> None:
    p = ws.root / "in" / "bad.onnx"
    p.parent.mkdir(exist_ok=True)
    _raw_model(p, "NoSuchOp") if case == "unknown op" else _raw_model(p, "Identity", TensorProto.INT32)
    refused(ws, "score", "in/bad.onnx", "-c", "rec.csv", "-k", "3", "-T", "3", "-q", "-o", "out/s.json", words="onnxruntime refused")
    refused(
        ws, "build", "in/bad.onnx", "-t", "x86-64", "-c", "rec.csv", "-k", "3", "-d", "local", "-o", "out/dist", words="onnxruntime refused"
    )
    ws.restore()


def test_9_truncated_npz_binary_toml_and_json_shapes_are_one_line_each(ws: robust.Workspace) -> None:
    raw = (ws.root / "chk" / "reference.npz").read_bytes()
    refused(ws, "score", "m.onnx", "-c", "in/c.npz", files=(("in/c.npz", raw[:200]),), words="in/c.npz")
    refused(ws, "score", "--project", "in/p.toml", files=(("in/p.toml", b"\xff\xfe\x00\x01"),), words="in/p.toml")
    for text in ("[]", "null", '{"schema_version": 2}'):
        refused(ws, "plan", "in/s.json", "-t", "x86-64", "--model", "m.onnx", files=(("in/s.json", text),), words="in/s.json")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"runtimes": []}, "'runtimes' is empty"),
        ({"precisions": {"ort": {"default": [8]}}}, "precisions.ort.default"),
        ({"validation": {"tolerance": float("nan")}}, "validation.tolerance"),
        ({"validation": {"horizon": 0}}, "validation.horizon"),
        ({"validation": {"horizon": -3}}, "validation.horizon"),
        ({"weight_budget_bytes": 2**60}, "weight_budget_bytes"),
        ({"description": robust.RawToml("1979-05-27")}, "'description' is a TOML date"),
    ],
    ids=["runtimes-empty", "default-8", "tolerance-nan", "horizon-0", "horizon-negative", "budget-huge", "date"],
)
def test_9_bad_target_files_are_one_line_naming_the_key(ws: robust.Workspace, change: dict, words: str) -> None:
    t = robust.target_base()
    for k, v in change.items():
        t[k] = {**t[k], **v} if isinstance(v, dict) and k == "validation" else v
    refused(
        ws, "plan", "scores.json", "--model", "m.onnx", "-t", "in/t.toml", "-q", words=words, files=(("in/t.toml", robust.toml_dumps(t)),)
    )


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0.0, -5.0, 1e12])
def test_9_a_device_timeout_that_is_not_a_finite_positive_number_is_refused(ws: robust.Workspace, value: float) -> None:
    d = {**robust.DEVICE_BASES["local"], "timeout_s": value}
    refused(
        ws,
        "check",
        "art/m.ort.onnx",
        "-r",
        "chk/reference.npz",
        "-d",
        "in/d.toml",
        "-o",
        "out/chk",
        words="timeout_s",
        files=(("in/d.toml", robust.toml_dumps(d)),),
    )


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["check", "art/m.ort.onnx", "-m", "m.onnx", "-c", "rec.csv", "--tolerance", "nan"], "tolerance nan"),
        (["check", "art/m.ort.onnx", "-m", "m.onnx", "-c", "rec.csv", "--tolerance", "inf"], "tolerance inf"),
        (["score", "m.onnx", "-c", "rec.csv", "--scale", "inf"], "scale inf"),
        (["score", "m.onnx", "-c", "rec.csv", "-T", "-3"], "horizon -3"),
        (["score", "m.onnx", "-c", "rec.csv", "--channel-axis", "7"], "channel axis 7"),
        (["score", "m.onnx", "-c", "rec.csv", "--seed", "-1"], "seed"),
        (["score", "m.onnx", "-c", "rec.csv", "--state", "1"], "state pair '1'"),
        (["score", "m.onnx", "-c", "rec.csv", "--output-slice", "...,1:0"], "selects nothing"),
        (["score", "m.onnx", "-c", "rec.csv", "--output-slice", "0:1:2"], "batch axis"),
        (["init", "/dev/null/x"], "/dev/null"),
    ],
    ids=[
        "tolerance-nan",
        "tolerance-inf",
        "scale-inf",
        "T-negative",
        "channel-axis",
        "seed",
        "state",
        "slice-empty",
        "slice-batch",
        "init-under-device",
    ],
)
def test_9_options_that_raised_are_one_line(ws: robust.Workspace, argv: list[str], words: str) -> None:
    refused(ws, *argv, words=words)


def test_9_score_into_a_folder_is_refused_and_leaves_no_temp(ws: robust.Workspace) -> None:
    refused(ws, "score", "m.onnx", "-c", "rec.csv", "-k", "3", "-T", "4", "-q", "-o", "art", words=("'art' is a folder", "art/scores.json"))


@pytest.mark.parametrize("command", ["convert", "check", "build", "init"])
def test_9_an_existing_file_as_output_folder_is_one_line_and_untouched(ws: robust.Workspace, command: str) -> None:
    argv = list(robust.BASES[command])
    if command == "init":
        argv[1] = "user.txt"
    else:
        argv[argv.index("-o") + 1] = "user.txt"
    refused(ws, *argv, words="user.txt")


def test_9_convert_into_a_folder_that_has_the_artifact_needs_overwrite(ws: robust.Workspace) -> None:
    refused(
        ws,
        "convert",
        "m.onnx",
        "-p",
        "plan.json",
        "-f",
        "ort",
        "-c",
        "rec.csv",
        "-k",
        "3",
        "-o",
        "art",
        words=("'art/m.ort.onnx' exists", "--overwrite"),
    )
    refused(ws, "init", "in/p", files=(("in/p/model.onnx", b"mine"),), words=("already exist", "--overwrite"))


@pytest.fixture
def small_tmpfs() -> Path:
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root")
    mnt = Path(tempfile_mkdtemp())
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()


def tempfile_mkdtemp() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="edgetqs-full-")


def test_9_a_full_disk_is_one_line_and_keeps_what_was_there(ws: robust.Workspace, small_tmpfs: Path) -> None:
    """Real commands on a 256 KiB file system: scores and a plan fit, a PNG and the bundle do not; each failure is
    one line saying no space is left, and every file that was there is unchanged, nothing half-written beside it."""
    shutil.copy(ws.root / "m.onnx", small_tmpfs / "m.onnx")
    shutil.copy(ws.root / "rec.csv", small_tmpfs / "rec.csv")
    (small_tmpfs / ".cache").mkdir()
    (small_tmpfs / "tmp").mkdir()
    r = robust.run_cli(["score", "m.onnx", "-c", "rec.csv", "-k", "3", "-T", "4", "-q", "-o", "s.json"], small_tmpfs)
    assert r.rc == 0, r.stderr
    fd = os.open(small_tmpfs / "filler", os.O_WRONLY | os.O_CREAT)  # fill the file system to the last byte
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    before = robust.snapshot(small_tmpfs)
    for argv in (
        ["score", "m.onnx", "-c", "rec.csv", "-k", "3", "-T", "4", "-q", "-o", "s.json", "--force"],
        ["score", "m.onnx", "-c", "rec.csv", "-k", "3", "-T", "4", "-q", "-o", "s2.json", "--plot", "p.png"],
        ["build", "m.onnx", "-t", "x86-64", "-c", "rec.csv", "-k", "3", "-d", "local", "-o", "dist", "--no-refine"],
    ):
        r = robust.run_cli(argv, small_tmpfs, timeout=300)
        assert r.rc == 2 and len(r.error_lines) == 1 and "no space left" in r.error_lines[0], (argv, r.stderr[-600:])
        after = robust.snapshot(small_tmpfs)
        assert {k: v for k, v in after.items() if k in before} == before
        extra = sorted(set(after) - set(before))
        assert all(k.startswith((".cache", "dist")) for k in extra), extra  # at most the cache's folders, build's lock
        assert not [k for k in extra if ".tmp-" in k or ".w-" in k or ".v-" in k], extra


# -------------------------------------------------------------------- 10. silently accepted


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["plan", "scores.json", "-t", "x86-64", "--model", "m.onnx", "--budget", ""], "--budget is given an empty value"),
        (["plan", "scores.json", "-t", "x86-64", "--model", "m.onnx", "--budget", "10KB", "--ratio", "0.3"], "not both"),
        (["plan", "scores.json", "-t", "x86-64", "--model", "m.onnx", "--pin", "nosuch=int8-channel"], "matches no weight tensor"),
        (["convert", "m.onnx", "-p", "plan.json", "-f", "ort", "-T", "0", "-o", "out/a"], "horizon 0"),
        (["check", "art/m.ort.onnx", "-m", "m.onnx", "-c", "rec.csv", "-T", "0"], "horizon 0"),
        (["check", "art/m.ort.onnx", "-m", "m.onnx", "-c", "rec.csv", "--tolerance", "-1"], "tolerance -1"),
        (["plan", "scores.json", "-t", "x86-64", "--model", "m.onnx", "-c", "rec.csv"], "only with --evaluate"),
        (["check", "art/m.ort.onnx", "-r", "chk/reference.npz", "-c", "rec.csv"], "already holds the contexts"),
        (["convert", "m.onnx", "-p", "plan.json", "-f", "ort", "--activations", "int8", "-o", "out/a"], "int8 activations"),
        (["score", "m.onnx", "-c", "rec.csv", "--strategy", "bogus"], "strategy 'bogus'"),
        (["score", "m.onnx", "-c", "rec.csv", "--workers", "1025"], "workers"),
        (["score", "m.onnx", "-c", "rec.csv", "--spinup-scale", "2"], "--spinup-scale"),
        (["score", "m.onnx", "-c", "rec.npy", "--variables", "v0,v1"], "2 names"),
        (["score", "m.onnx", "-c", "rec.csv", "--ladder", ""], "--ladder is given an empty value"),
        (["score", "m.onnx", "-c", "rec.csv", "--span", ""], "--span is given an empty value"),
    ],
    ids=[
        "budget-empty", "budget-and-ratio", "pin-nosuch", "convert-T0", "check-T0", "tolerance-negative", "plan-unused-contexts",
        "check-unused-contexts", "activations-ort", "strategy", "workers-1025", "spinup-scale-unused", "variables-count", "ladder-empty", "span-empty",
    ],
)  # fmt: skip
def test_10_bad_values_are_no_longer_silently_accepted(ws: robust.Workspace, argv: list[str], words: str) -> None:
    refused(ws, *argv, words=words)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"k": 0}, "'k' = 0"),
        ({"variables": [1, 2]}, "'variables.0' = 1"),
        ({"variables": ["v0", "v0"]}, "distinct"),
        ({"name": "a b"}, "'name'"),
    ],
    ids=["k-0", "variables-int", "variables-twice", "name-space"],
)
def test_10_bad_project_values_are_refused_naming_the_key(ws: robust.Workspace, change: dict, words: str) -> None:
    p = {**robust.PROJECT_BASE, **change}
    refused(
        ws,
        "score",
        "--project",
        "in/p.toml",
        "-q",
        "-o",
        "out/s.json",
        words=("in/p.toml", words),
        files=(("in/p.toml", robust.toml_dumps(p)),),
    )


# --------------------------------------------------------------------------- 11. empty files


@pytest.mark.parametrize("name", ["empty.npy", "empty.npz"])
def test_11_an_empty_contexts_file_is_an_error_line_not_aborted(ws: robust.Workspace, name: str) -> None:
    buf = io.BytesIO()
    np.save(buf, np.zeros((0, 8), np.float32)) if name.endswith("npy") else np.savez(buf)
    line = refused(ws, "score", "m.onnx", "-c", f"in/{name}", "-q", files=((f"in/{name}", buf.getvalue()),))
    assert "empty" in line or "holds arrays []" in line


# ---------------------------------------------------------------------------------- 12. ssh


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("user", "-oProxyCommand=touch /tmp/pwned"),
        ("host", "-oProxyCommand=x"),
        ("user", "a b"),
        ("host", "[/bold]x"),
        ("known_hosts", ""),
        ("key", " "),
    ],
)
def test_12_ssh_user_host_and_paths_that_ssh_would_misread_are_refused(ws: robust.Workspace, key: str, value: str) -> None:
    d = {**robust.DEVICE_BASES["ssh"], key: value}
    refused(
        ws,
        "check",
        "art/m.ort.onnx",
        "-r",
        "chk/reference.npz",
        "-d",
        "in/d.toml",
        "-o",
        "out/chk",
        words=f"'{key}'",
        files=(("in/d.toml", robust.toml_dumps(d)),),
    )


def test_12_ssh_passes_the_destination_after_double_dash_and_trusts_only_the_named_known_hosts(ws: robust.Workspace) -> None:
    from edgetqs.validation.devices import load_device

    robust._make(ws.root, (("in/d.toml", robust.toml_dumps(robust.DEVICE_BASES["ssh"])),))
    dev = load_device(ws.root / "in" / "d.toml")
    cmd = dev.ssh_command()
    assert cmd[-2:] == ["--", "pi@127.0.0.1"]
    assert "GlobalKnownHostsFile=/dev/null" in cmd and "StrictHostKeyChecking=yes" in cmd
    assert any(c.startswith("UserKnownHostsFile=") and c.endswith("known_hosts") for c in cmd)
    (ws.root / "known_hosts").write_text("")
    here = os.getcwd()
    os.chdir(ws.root)  # key and known_hosts are relative paths
    try:
        ready, why = dev.ready()
    finally:
        os.chdir(here)
    assert not ready and "is empty" in why
    ws.restore()


# ------------------------------------------------------------ found by the generated suite (-m fuzz)


@pytest.mark.parametrize("text", ["x\x85y", "a\u2028b", "e\x1b[2Jf", "r\u202eev", "t\x1ew"], ids=["NEL", "LS", "ESC", "RLO", "RS"])
def test_user_text_with_control_characters_stays_one_escaped_line(ws: robust.Workspace, text: str) -> None:
    """A name with a line separator split the error in two (str.splitlines breaks at NEL, LS, RS...), and one with an
    escape sequence could drive the terminal: such characters are now printed as their escapes."""
    line = refused(ws, "score", "m.onnx", "-c", "rec.csv", "--static", text)
    assert text.encode("unicode_escape").decode("ascii").split("\\")[1][:3] in line
    assert line.isprintable()


def test_pareto_0_is_refused_before_the_plan(ws: robust.Workspace) -> None:
    refused(ws, "plan", "scores.json", "-t", "x86-64", "--model", "m.onnx", "-q", "-o", "out/p.json", "--pareto", "0", words="--pareto 0")


def test_a_budget_of_400_digits_is_refused_not_an_overflow(ws: robust.Workspace) -> None:
    line = refused(ws, "plan", "scores.json", "-t", "x86-64", "--model", "m.onnx", "--budget", "1" * 400, words="up to 1 PiB")
    assert len(line) < 2100  # the quoted value is shortened, the advice kept
