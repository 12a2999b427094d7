"""The forecasters of issue 18 as their frameworks export them, through every command as a user runs them:
score -> plan -> convert -> check -> build, on the command line (in this process).

- a one-step GRU and an LSTM window forecaster x[B, L, C] -> y[B, C] (legacy export), windows [N, L, C] in an .npy;
- a univariate patch forecaster x[B, L] -> y[B, H] (dynamo export, opset 20), windows [N, L] in an .npy;
- a conv state model with circular padding whose slice bounds the legacy exporter computes at run time,
  with a record [N, C, lat, lon].

The ONNX Runtime leg (raspberrypi) runs now; the TFLite / TFLite-Micro legs (stm32h743) need the recurrent
and GELU legalisation wired into the converters (another branch): they run in the ``tflite``/``mcu`` tiers
and their outcome is printed (``-s``) for the closing note.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import realmodels
from typer.testing import CliRunner

from edgetqs import console
from edgetqs.cli import app

pytestmark = pytest.mark.slow


def cli(*argv: str) -> tuple[int, str, str]:
    """(exit status, output, error line) of one command run in this process."""
    console.LAST["error"] = None
    r = CliRunner().invoke(app, [str(a) for a in argv], standalone_mode=False)
    code = r.exc_info[1].code if r.exc_info and isinstance(r.exc_info[1], console.Exit) else r.exit_code
    if r.exception is not None and not isinstance(r.exception, (console.Exit, SystemExit)):
        raise r.exception
    e = console.LAST["error"]
    return code, r.output, "" if e is None else str(e)


def _record(n: int, c: int, seed: int = 0) -> np.ndarray:
    """A smooth multivariate series [n, c]: daily and slower cycles with noise, standardised."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    x = np.sin(2 * np.pi * t / 24 + rng.uniform(0, 6, c)) + 0.5 * np.sin(2 * np.pi * t / 200 + rng.uniform(0, 6, c))
    x = x + 0.1 * rng.standard_normal((n, c))
    return ((x - x.mean(0)) / x.std(0)).astype(np.float32)


def _windows(rec: np.ndarray, L: int, every: int) -> np.ndarray:
    return np.lib.stride_tricks.sliding_window_view(rec, L, axis=0).transpose(0, 2, 1)[::every].copy()  # [N, L, C]


def gru(d: Path) -> tuple[Path, Path, str]:
    np.save(d / "windows.npy", _windows(_record(800, 5), 48, 12))
    return realmodels.gru_onestep(d / "gru.onnx", L=48, C=5, hidden=32), d / "windows.npy", "one-step"


def lstm(d: Path) -> tuple[Path, Path, str]:
    np.save(d / "windows.npy", _windows(_record(800, 5, seed=1), 48, 12))
    return realmodels.lstm_onestep(d / "lstm.onnx", L=48, C=5, hidden=32), d / "windows.npy", "one-step"


def patch(d: Path) -> tuple[Path, Path, str]:
    np.save(d / "windows.npy", _windows(_record(1200, 1, seed=2), 64, 16)[..., 0])  # [N, L]
    return realmodels.patch_univariate(d / "patch.onnx", L=64, H=8), d / "windows.npy", "univariate"


def circ(d: Path) -> tuple[Path, Path, str]:
    rng = np.random.default_rng(3)
    rec = np.cumsum(0.1 * rng.standard_normal((60, 2, 8, 16)), axis=0).astype(np.float32)  # a slowly varying field
    np.save(d / "record.npy", rec)
    return realmodels.circular_conv_state(d / "circ.onnx", C=2, lat=8, lon=16), d / "record.npy", "state"


MODELS: dict[str, Callable[[Path], tuple[Path, Path, str]]] = {
    "gru_onestep": gru,
    "lstm_onestep": lstm,
    "patch_univariate": patch,
    "circular_conv_state": circ,
}


def _summary(name: str, target: str, bundle: Path) -> str:
    m = json.loads((bundle / "manifest.json").read_text())
    c = json.loads((bundle / "check.json").read_text())
    s = m["sizes"]
    return (
        f"{name} | {target} | {m['format']} | {'PASS' if m['passed'] else 'FAIL'} | {m['verdict']} | "
        f"weights {s.get('weight_bytes'):,} of {m['budget_bytes']:,} (fp32 {s.get('fp32_weight_bytes'):,}) | "
        f"file {s.get('file_bytes'):,} | arena {s.get('arena_bytes')} | tolerance {c['tolerance']}"
    )


@pytest.mark.parametrize("name", list(MODELS))
def test_ort_route_score_plan_convert_check_build_raspberrypi(tmp_path: Path, name: str) -> None:
    model, ctx, form = MODELS[name](tmp_path)
    common = ("-c", ctx, "-k", "4")
    code, out, err = cli("score", model, *common, "-T", "6", "-o", tmp_path / "s.json", "-q")
    assert code == 0, err or out
    rollout = next((ln for ln in out.splitlines() if "rollout:" in ln), "state mode")  # detected, no flags given
    drawn = next((ln for ln in out.splitlines() if "contexts:" in ln), "")
    assert (f"window mode ({form})" if form != "state" else "state mode") in rollout, out
    if form != "state":  # the stack of windows is read as windows, spread over the stack
        assert "read as" in out and "windows" in out and "evenly spaced" in out, out
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["rollout"]["mode"] == ("state" if form == "state" else "window")
    info = scores["contexts"]  # which contexts were used: rows of the stack, or start rows in the record
    used = info["windows"] if form != "state" else info["start_indices"]
    assert len(used) == 4 and len(set(used)) == 4 and info["pick"] == "even"
    code, out, err = cli(
        "plan", tmp_path / "s.json", "-t", "raspberrypi", "--model", model, "--ratio", "0.25", "-o", tmp_path / "p.json", "-q"
    )
    assert code == 0, err or out
    code, out, err = cli("convert", model, "-p", tmp_path / "p.json", "-f", "ort", "-o", tmp_path / "art", *common)
    assert code == 0, err or out
    art = next((tmp_path / "art").glob("*.ort.onnx"))
    code, out, err = cli("check", art, "--model", model, *common, "-t", "raspberrypi", "-o", tmp_path / "chk")
    assert code in (0, 1), err or out  # PASS or FAIL: the check's finding, with numbers
    assert (tmp_path / "chk" / "check.json").exists()
    code, out, err = cli("build", model, "-t", "raspberrypi", "--ratio", "0.25", "-d", "local", *common, "-o", tmp_path / "dist")
    assert code in (0, 1), err or out
    assert "reusing scores from" in out or "swept" in out
    bundle = next(p for p in (tmp_path / "dist").iterdir() if p.is_dir())
    print("\nBUILD |", _summary(name, "raspberrypi", bundle), "|", rollout.removeprefix("note: "), "|", drawn.removeprefix("note: "))


@pytest.mark.long
@pytest.mark.tflite
@pytest.mark.parametrize("name", list(MODELS))
def test_tflite_route_convert_and_check(tmp_path: Path, name: str) -> None:
    """Needs the legalisation of GRU/LSTM/GELU/run-time slices on the TFLite route (h-i14)."""
    model, ctx, _ = MODELS[name](tmp_path)
    common = ("-c", ctx, "-k", "4")
    assert cli("score", model, *common, "-T", "6", "-o", tmp_path / "s.json", "-q")[0] == 0
    code, out, err = cli(
        "plan",
        tmp_path / "s.json",
        "-t",
        "raspberrypi",
        "--runtime",
        "tflite",
        "--model",
        model,
        "-o",
        tmp_path / "p.json",
        "-q",
    )
    assert code == 0, err or out
    code, out, err = cli("convert", model, "-p", tmp_path / "p.json", "-f", "tflite", "-o", tmp_path / "art", *common)
    print(f"\nTFLITE | {name} | convert exit {code} | {err[:400]}")
    assert code == 0, err or out
    art = next((tmp_path / "art").glob("*.tflite"))
    code, out, err = cli("check", art, "--model", model, *common, "-t", "raspberrypi", "-o", tmp_path / "chk")
    assert code in (0, 1), err or out
    print(f"TFLITE | {name} | check exit {code} | {json.loads((tmp_path / 'chk' / 'check.json').read_text())['verdict']}")


@pytest.mark.long
@pytest.mark.mcu
@pytest.mark.parametrize("name", list(MODELS))
def test_build_stm32h743(tmp_path: Path, name: str) -> None:
    """A PASS/FAIL with numbers, or a clean budget error with the figures (the arena over the RAM budget)."""
    model, ctx, _ = MODELS[name](tmp_path)
    code, out, err = cli("build", model, "-t", "stm32h743", "-d", "local", "-c", ctx, "-k", "4", "-o", tmp_path / "dist")
    print(f"\nSTM32 | {name} | build exit {code} | {err[:400]}")
    if code == 2:
        assert "budget" in err and "bytes" in err, err  # a clean budget error with the figures, nothing else
        return
    assert code in (0, 1), err or out
    print("BUILD |", _summary(name, "stm32h743", next(p for p in (tmp_path / "dist").iterdir() if p.is_dir())))
