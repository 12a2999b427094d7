"""The Python API as the README shows it: score -> plan -> convert -> check -> build, paths in, objects out."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgetqs
from edgetqs.examples import init_project


@pytest.mark.slow
@pytest.mark.mcu
def test_readme_api_flow(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDGETQS_CACHE_DIR", str(tmp_path / "cache"))
    init_project(tmp_path, "station")
    monkeypatch.chdir(tmp_path)
    scores = edgetqs.score("model.onnx", "contexts.npz", k=4, horizon=8)
    assert scores.ranked()[0].gamma is not None
    plan = edgetqs.plan(scores, "model.onnx", "stm32h743")
    assert plan.runtime == "tflm" and plan.weight_bytes <= plan.budget_bytes
    conv = edgetqs.convert("model.onnx", plan, "tflm", "artifacts", contexts="contexts.npz", k=4)
    assert conv.arena_bytes > 0 and conv.all_match
    assert conv.artifact == "model.tflm.tflite"  # named after the file given
    result = edgetqs.check("artifacts/model.tflm.tflite", model="model.onnx", contexts="contexts.npz", k=4, target="stm32h743", horizon=8)
    assert result.format == "tflm" and result.latency_ms["p50"] > 0 and result.rows["quantized_vs_float"].nrmse_by_lead[0] < 0.05
    bundle = edgetqs.build("model.onnx", "x86-64", contexts="contexts.npz", ratio=0.5, device="local", output=tmp_path / "dist")
    assert bundle.bundle.exists() and isinstance(bundle.passed, bool)
