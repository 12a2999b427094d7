"""`edgetqs build`: the pipeline into one atomic bundle, cached scores, the report rendered in Chromium."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import models
import numpy as np
import pytest

import edgetqs
from edgetqs.allocation.plan import InfeasibleBudgetError
from edgetqs.bundle.build import build
from edgetqs.bundle.manifest import verify_manifest
from edgetqs.examples import init_project

BUNDLE_FILES = {
    "lorenz96.ort.onnx",
    "scores.json",
    "plan.json",
    "convert.json",
    "check.json",
    "reference.npz",
    "manifest.json",
    "report.html",
}


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("EDGETQS_CACHE_DIR", str(tmp_path / "cache"))
    d = tmp_path / "proj"
    init_project(d, "lorenz96")
    monkeypatch.chdir(d)
    return d


def test_bundle_manifest_cache_and_api(project: Path) -> None:
    r = build(None, "raspberrypi", ratio=0.25, device="local", output=project / "dist", log=lambda m: None)
    assert r.passed and not r.scores_cached and r.bundle == project / "dist" / "lorenz96-raspberrypi"
    assert {p.name for p in r.bundle.iterdir()} == BUNDLE_FILES
    assert verify_manifest(r.bundle) == []
    m = json.loads((r.bundle / "manifest.json").read_text())
    assert m["passed"] is True and m["target"]["name"] == "raspberrypi" and m["sizes"]["weight_bytes"] <= m["budget_bytes"]
    assert m["versions"]["edgetqs"] == edgetqs.__version__ and "onnxruntime" in m["versions"]
    html = (r.bundle / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "PASS" in html and "http" not in html.split("<body>")[1].split("Versions")[0]
    # a changed file is caught by the manifest
    (r.bundle / "plan.json").write_text((r.bundle / "plan.json").read_text() + " ")
    assert verify_manifest(r.bundle) == ["plan.json: changed"]
    # another target reuses the sweep; --force reruns it; the API returns the same kind of result
    r2 = build(None, "x86-64", ratio=0.25, device="local", output=project / "dist", log=lambda m: None)
    assert r2.scores_cached and "score" in r2.stage_seconds
    r3 = edgetqs.build(None, "x86-64", ratio=0.25, device="local", output=project / "dist", force=True)
    assert not r3.scores_cached and r3.passed
    s1 = json.loads((r2.bundle / "scores.json").read_text())
    s3 = json.loads((r3.bundle / "scores.json").read_text())
    assert [g["gamma"] for g in s1["groups"]] == [g["gamma"] for g in s3["groups"]]  # same sweep, same numbers


def test_report_renders_in_headless_chromium(project: Path, tmp_path: Path) -> None:
    from PIL import Image

    from edgetqs.bundle.report import screenshot

    r = build(None, "raspberrypi", ratio=0.25, device="local", output=project / "dist", log=lambda m: None)
    png = screenshot(r.bundle / "report.html", tmp_path / "report.png", height=3000)
    im = Image.open(png).convert("RGB")
    assert im.size == (1280, 3000)
    small = np.asarray(im.resize((128, 300)))
    assert len(np.unique(small.reshape(-1, 3), axis=0)) > 200  # text, plots and bars, not a blank page


def test_infeasible_budget_stops_before_conversion(project: Path) -> None:
    with pytest.raises(InfeasibleBudgetError, match=r"smallest feasible size [\d,]+ bytes"):
        build(None, "nrf52840", budget="2KB", output=project / "dist", log=lambda m: None)
    assert not (project / "dist").exists() or not any((project / "dist").iterdir())


def test_failing_conversion_leaves_the_old_bundle_alone(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDGETQS_CACHE_DIR", str(tmp_path / "cache"))
    import onnx

    mpath = models.fused_mlp(tmp_path / "fused.onnx")
    # onnxruntime runs com.microsoft.Gelu; the TFLite route has no rewrite for it (FusedMatMul is legalised now)
    m = onnx.load(str(mpath))
    m.graph.node[1].op_type, m.graph.node[1].domain = "Gelu", "com.microsoft"
    onnx.save(m, str(mpath))
    np.save(tmp_path / "r.npy", np.random.default_rng(0).standard_normal((60, 8)).astype(np.float32))
    kw = dict(contexts=tmp_path / "r.npy", device="local", output=tmp_path / "dist", log=lambda m: None)
    ok = build(mpath, "raspberrypi", **kw)
    before = {p.name: p.read_bytes() for p in ok.bundle.iterdir()}
    with pytest.raises(edgetqs.errors.EdgetqsError, match="Gelu.*no rewrite"):
        build(mpath, "raspberrypi", fmt="tflite", **kw)
    assert {p.name: p.read_bytes() for p in ok.bundle.iterdir()} == before
    entries = sorted(p.name for p in (tmp_path / "dist").iterdir())
    assert [e for e in entries if not e.startswith(".")] == ["fused-raspberrypi"]
    assert not [e for e in entries if ".w-" in e]  # no work folder left
    assert [e for e in entries if ".v-" in e] == [ok.bundle.resolve().name]  # one published version: the old one


def test_ctrl_c_leaves_no_partial_bundle(project: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgetqs.cli", "build", "--target", "raspberrypi", "--ratio", "0.25", "-d", "local"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    dist = project / "dist"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if dist.exists() and any(p.name.startswith(".lorenz96-raspberrypi.w-") for p in dist.iterdir()):
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.01)
    else:
        pytest.fail("the build ended before a partial bundle appeared")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, out
    assert [p.name for p in dist.iterdir() if not p.name.endswith(".lock")] == []  # no bundle, no work folder
    assert b"Traceback" not in err


@pytest.mark.mcu
def test_cli_build_then_other_target_reuses_scores(project: Path) -> None:
    exe = [sys.executable, "-m", "edgetqs.cli", "build"]
    a = subprocess.run([*exe, "--target", "raspberrypi", "--ratio", "0.25", "-d", "local"], capture_output=True, text=True, cwd=project)
    assert a.returncode == 0, a.stderr
    assert "swept" in a.stderr and "PASS" in a.stdout
    b = subprocess.run([*exe, "--target", "stm32h743", "-d", "local"], capture_output=True, text=True, cwd=project)
    assert "reusing scores from" in b.stderr
    assert b.returncode in (0, 1), b.stderr  # a bundle either way: pass or fail is the check's finding
    assert (project / "dist" / "lorenz96-stm32h743" / "lorenz96.tflm.tflite").exists()
    assert verify_manifest(project / "dist" / "lorenz96-stm32h743") == []
    c = subprocess.run([*exe, "--target", "nope"], capture_output=True, text=True, cwd=project)
    assert c.returncode == 2 and c.stderr.startswith("error: unknown target 'nope'")


def test_checking_a_bundle_again_uses_its_reference_and_leaves_it_intact(project: Path) -> None:
    r = build(None, "raspberrypi", ratio=0.25, device="local", output=project / "dist", log=lambda m: None)
    (project / "edgetqs.toml").unlink()  # no project, no float model: the bundle's reference.npz is enough
    (project / "model.onnx").unlink()
    c = subprocess.run(
        [sys.executable, "-m", "edgetqs.cli", "check", str(r.bundle / "lorenz96.ort.onnx"), "-d", "local"],
        capture_output=True,
        text=True,
        cwd=project,
    )
    assert c.returncode == 0, c.stderr
    assert (project / "check-lorenz96-raspberrypi-local" / "check.json").exists()
    assert verify_manifest(r.bundle) == []
