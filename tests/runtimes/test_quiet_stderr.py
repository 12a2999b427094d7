"""A TFLite conversion prints nothing on stderr but edgetqs's own lines (issue 18: TensorFlow's start-up noise,
absl's and the LiteRT interpreter's lines, reached the terminal). With ``--debug`` the set-aside text is shown,
which also proves there was noise to set aside."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import models
import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.tflite]

EXE = [sys.executable, "-m", "edgetqs.cli"]
OURS = ("note:", "wrote ", "error:", "      ", "[", "reusing scores from", "checking ", "plot:")


def run(cwd: Path, *args: str, debug: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "EDGETQS_CACHE_DIR": str(cwd / "cache")}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the user's shell does not set it either
    env.pop("EDGETQS_DEBUG", None)
    return subprocess.run(EXE + (["--debug"] if debug else []) + list(args), capture_output=True, text=True, cwd=cwd, env=env, timeout=900)


def test_tflite_convert_prints_only_our_lines_on_stderr(tmp_path: Path) -> None:
    models.state_mlp(tmp_path / "m.onnx")
    np.save(tmp_path / "rec.npy", np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32))
    common = ["-c", "rec.npy", "-k", "3"]
    assert run(tmp_path, "score", "m.onnx", *common, "-T", "4", "-o", "s.json", "-q").returncode == 0
    r = run(tmp_path, "plan", "s.json", "-t", "raspberrypi", "--runtime", "tflite", "--model", "m.onnx", "-o", "p.json", "-q")
    assert r.returncode == 0, r.stderr
    r = run(tmp_path, "convert", "m.onnx", "-p", "p.json", "-f", "tflite", "-o", "art", *common)
    assert r.returncode == 0, r.stderr
    foreign = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith(OURS)]
    assert foreign == [], r.stderr
    assert "wrote art/m.tflite" in r.stderr
    d = run(tmp_path, "convert", "m.onnx", "-p", "p.json", "-f", "tflite", "-o", "art2", *common, debug=True)
    assert d.returncode == 0, d.stderr
    assert "native stderr set aside during the command:" in d.stderr, d.stderr
