"""The command line: outputs, and one clear line with a non-zero exit for every bad input."""

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


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(EXE + list(args), capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_score_writes_json_table_and_plot(state_model: Path, record: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    r = run("score", str(state_model), "-c", str(record), "-k", "4", "-T", "6", "-o", str(out), "--plot", str(png), "--strategy", "feed")
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d["schema_version"] == 2 and d["horizon"] == 6 and d["contexts"]["k"] == 4
    assert len(d["groups"]) == 4 and d["forward_calls"] == 6 * 6
    assert {"name", "tensors", "n_params", "gamma", "gamma_curve", "gain", "dead", "probe", "diverged_step"} <= set(d["groups"][0])
    assert len(d["model_sha256"]) == 64 and d["wall_seconds"] > 0
    assert "l2.weight" in r.stdout and "rank" in r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_score_on_worker_processes_matches_serial(state_model: Path, record: Path, tmp_path: Path) -> None:
    outs = []
    for extra in ([], ["--backend", "processes", "--workers", "2"]):
        out = tmp_path / f"s{len(outs)}.json"
        r = run(
            "score",
            str(state_model),
            "-c",
            str(record),
            "-k",
            "4",
            "-T",
            "5",
            "-o",
            str(out),
            "--strategy",
            "feed",
            "-q",
            "--force",
            *extra,
        )
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(out.read_text()))
    assert outs[0]["groups"] == outs[1]["groups"] and (outs[0]["workers"], outs[1]["workers"]) == (1, 2)


def test_spinup_is_said_in_output_and_json(state_model: Path, tmp_path: Path) -> None:
    r = run("score", str(state_model), "--spinup", "-k", "3", "-T", "4", "-o", str(tmp_path / "s.json"), "-q")
    assert r.returncode == 0, r.stderr
    assert "spin-up" in r.stderr
    assert "spin-up" in json.loads((tmp_path / "s.json").read_text())["notes"][0]


def _bad_cases(tmp: Path, state_model: Path, record: Path) -> dict[str, tuple[list[str], str]]:
    (tmp / "junk.onnx").write_text("not a model")
    models.no_weights(tmp / "nw.onnx")
    np.save(tmp / "wrong.npy", np.zeros((30, 5), np.float32))
    np.save(tmp / "short.npy", np.zeros((3, 8), np.float32))
    return {
        "missing model": (["score", str(tmp / "nope.onnx"), "-c", str(record)], "does not exist"),
        "not onnx": (["score", str(tmp / "junk.onnx"), "-c", str(record)], "not a readable ONNX"),
        "no float weights": (["score", str(tmp / "nw.onnx"), "-c", str(record)], "no float weight"),
        "contexts shape": (["score", str(state_model), "-c", str(tmp / "wrong.npy")], "[30, 5]"),
        "missing contexts": (["score", str(state_model), "-c", str(tmp / "none.npy")], "does not exist"),
        "horizon zero": (["score", str(state_model), "-c", str(record), "-T", "0"], "horizon 0"),
        "horizon negative": (["score", str(state_model), "-c", str(record), "-T", "-2"], "horizon -2"),
        "horizon text": (["score", str(state_model), "-c", str(record), "-T", "soon"], "horizon 'soon'"),
        "k too large": (["score", str(state_model), "-c", str(tmp / "short.npy"), "-k", "8"], "K=8 contexts do not fit"),
        "bad probe": (["score", str(state_model), "-c", str(record), "--probe", "laplace"], "probe 'laplace'"),
        "no model at all": (["score"], "no model given"),
        "bad backend": (["score", str(state_model), "-c", str(record), "--backend", "spark"], "unknown sweep backend 'spark'"),
        "address without ray": (["score", str(state_model), "-c", str(record), "--address", "h:6379"], "is for the ray backend"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing model",
        "not onnx",
        "no float weights",
        "contexts shape",
        "missing contexts",
        "horizon zero",
        "horizon negative",
        "horizon text",
        "k too large",
        "bad probe",
        "bad backend",
        "address without ray",
        "no model at all",
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(case: str, state_model: Path, record: Path, tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    args, words = _bad_cases(work, state_model, record)[case]
    r = run(*args, cwd=work)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert words in lines[0]


def test_project_file_unknown_key_names_file_and_key(state_model: Path, tmp_path: Path) -> None:
    (tmp_path / "edgetqs.toml").write_text(f'model = "{state_model}"\n[score]\nhorizonn = 5\n')
    r = run("score", cwd=tmp_path)
    assert r.returncode == 2 and "edgetqs.toml" in r.stderr and "'horizonn'" in r.stderr


def test_project_file_wrong_type(state_model: Path, tmp_path: Path) -> None:
    (tmp_path / "edgetqs.toml").write_text(f'model = "{state_model}"\nk = "eight"\n')
    r = run("score", cwd=tmp_path)
    assert r.returncode == 2 and "'k' = 'eight'" in r.stderr and "expected int" in r.stderr


def test_ambiguous_rollout_lists_inputs_and_outputs(tmp_path: Path) -> None:
    p = models.static_conv(tmp_path / "s.onnx")
    np.save(tmp_path / "r.npy", np.zeros((10, 2, 6, 6), np.float32))
    r = run("score", str(p), "-c", str(tmp_path / "r.npy"))
    assert r.returncode == 2 and "mask[?, 1, 6, 6]" in r.stderr and "--static" in r.stderr


def test_import_and_help_stay_light() -> None:
    code = (
        "import sys, edgetqs, edgetqs.cli\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(edgetqs.cli.app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(edgetqs.cli.app, ['score', '--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "heavy = [m for m in ('torch', 'tensorflow', 'onnx2tf', 'onnxruntime', 'onnx', 'matplotlib', 'xarray') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def _scored(tmp_path: Path) -> tuple[Path, Path]:
    m = models.deep_mlp(tmp_path / "deep.onnx")
    rec = tmp_path / "r.npy"
    np.save(rec, np.random.default_rng(0).standard_normal((60, 8)).astype(np.float32))
    r = run("score", str(m), "-c", str(rec), "-k", "4", "-T", "5", "-o", str(tmp_path / "scores.json"), "-q")
    assert r.returncode == 0, r.stderr
    return m, rec


def test_plan_writes_json_table_pareto_and_evaluation(tmp_path: Path) -> None:
    m, rec = _scored(tmp_path)
    out, png = tmp_path / "plan.json", tmp_path / "front.png"
    r = run(
        "plan",
        str(tmp_path / "scores.json"),
        "--target",
        "raspberrypi",
        "--budget",
        "4KB",
        "--pareto",
        "5",
        "--evaluate",
        "-c",
        str(rec),
        "-o",
        str(out),
        "--plot",
        str(png),
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d["schema_version"] == 2 and d["budget_bytes"] == 4000 and d["weight_bytes"] <= 4000
    assert d["headroom_bytes"] == 4000 - d["weight_bytes"] and d["predicted_error"] > 0
    assert {"name", "precision", "granularity", "bytes", "residual", "error_share", "rule"} <= set(d["tensors"][0])
    assert "Pareto front" in r.stdout and "measured" in r.stdout and "lead step" in r.stdout
    ev = d["evaluation"]
    assert len(ev["nrmse_by_lead"]) == 5 and ev["error_at_horizon"] >= 0 and ev["contexts"]["k"] == 8
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_plan_infeasible_budget_exits_with_smallest_size(tmp_path: Path) -> None:
    _scored(tmp_path)
    r = run("plan", str(tmp_path / "scores.json"), "--target", "stm32h743", "--budget", "100")
    assert r.returncode == 2 and "smallest feasible size" in r.stderr and "Traceback" not in r.stderr


def test_plan_reserve_keeps_bytes_unspent_and_refuses_a_bad_size(tmp_path: Path) -> None:
    _scored(tmp_path)
    out = tmp_path / "plan.json"
    r = run("plan", str(tmp_path / "scores.json"), "--target", "raspberrypi", "--budget", "4KB", "--reserve", "1KiB", "-o", str(out))
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d["budget_bytes"] == 4000 and d["weight_bytes"] <= 4000 - 1024 and d["options"]["reserve_bytes"] == 1024
    r = run("plan", str(tmp_path / "scores.json"), "--target", "raspberrypi", "--reserve", "0", "-o", str(out))
    assert r.returncode == 0, r.stderr
    r = run("plan", str(tmp_path / "scores.json"), "--target", "raspberrypi", "--reserve", "lots", "-o", str(out))
    assert r.returncode == 2 and "--reserve: size 'lots'" in r.stderr and "Traceback" not in r.stderr


def test_plan_malformed_target_names_file_key_and_type(tmp_path: Path) -> None:
    _scored(tmp_path)
    t = tmp_path / "board.toml"
    t.write_text(
        'name = "b"\narch = "x"\nruntimes = ["ort"]\nweight_budget_bytes = "lots"\nram_budget_bytes = 1\n[precisions.ort]\ndefault = ["fp32"]\n'
    )
    r = run("plan", str(tmp_path / "scores.json"), "--target", str(t))
    assert r.returncode == 2 and str(t) in r.stderr and "'weight_budget_bytes'" in r.stderr and "expected int" in r.stderr


def test_targets_lists_budgets() -> None:
    r = run("targets")
    assert r.returncode == 0
    for name in ("raspberrypi", "raspberrypi-zero2w", "x86-64", "stm32h743", "esp32s3", "nrf52840"):
        assert name in r.stdout
    assert "KiB" in r.stdout


def test_backend_settings_are_checked_when_the_scores_come_from_the_cache(state_model: Path, record: Path, tmp_path: Path) -> None:
    """A cached result skips the sweep, and the backend used to be checked only there: `--backend 'serial '` and
    `--address` without Ray were accepted once the scores were cached (found by the generated bad-input suite)."""
    base = ["score", str(state_model), "-c", str(record), "-k", "4", "-T", "5", "-q", "-o", str(tmp_path / "s.json")]
    assert run(*base, cwd=tmp_path).returncode == 0
    for extra, words in (
        (["--backend", "serial "], "unknown sweep backend 'serial '"),
        (["--address", "[/bold]x"], "is for the ray backend"),
    ):
        r = run(*base, *extra, cwd=tmp_path)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and words in lines[0], r.stderr
