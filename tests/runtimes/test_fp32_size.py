"""An fp32 ORT artifact is the input model, not larger (issue 18: at x86-64's default budget, where every
tensor stays fp32, the artifact was 5-9 % larger: the opset was raised to 21 for int4 that the plan did not
use, and the version converter's shape annotations were kept)."""

from __future__ import annotations

from pathlib import Path

import models
import onnx

from edgetqs.allocation.plan import PlanOptions, make_plan, parse_pin
from edgetqs.allocation.targets import find_target
from edgetqs.core.inputs import resolve
from edgetqs.runtimes.convert import convert
from edgetqs.sensitivity.scores import ProbeSettings
from edgetqs.sensitivity.sweep import run_sweep

METADATA = 64  # bytes a runtime may add (producer fields); the old artifact was 132 and 252 bytes larger


def _opset(path: Path) -> int:
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


def test_fp32_artifact_is_not_larger_than_its_input(tmp_path: Path) -> None:
    for build in (models.state_mlp, models.deep_mlp):
        src = build(tmp_path / f"{build.__name__}.onnx")
        inp = resolve(src, None, spinup=True, k=2)
        s = run_sweep(inp.model, inp.spec, inp.contexts, ProbeSettings(horizon=3))
        plan = make_plan(s, inp.model, find_target("x86-64"), PlanOptions(runtime="ort"))  # the default budget: all fp32
        assert {t.precision.name for t in plan.tensors} == {"fp32"}
        r = convert(inp.model, plan, "ort", tmp_path / build.__name__, inp.contexts, inp.spec, horizon=3)
        art = tmp_path / build.__name__ / r.artifact
        assert art.stat().st_size <= 1.01 * src.stat().st_size + METADATA, (build.__name__, art.stat().st_size, src.stat().st_size)
        assert _opset(art) == _opset(src) == 17 and not onnx.load(str(art)).graph.value_info
        # int8 per channel needs opset 13 (the model's 17 stays), int4 needs 21
        for pin, want in (("int8-channel", 17), ("int4-channel", 21)):
            p = make_plan(
                s, inp.model, find_target("x86-64"), PlanOptions(runtime="ort", ratio=1.0, pins=(parse_pin(f"re:.*weight={pin}"),))
            )
            r = convert(inp.model, p, "ort", tmp_path / f"{build.__name__}-{pin}", inp.contexts, inp.spec, horizon=3)
            assert _opset(tmp_path / f"{build.__name__}-{pin}" / r.artifact) == want
