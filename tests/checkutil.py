"""Shared set-up for the check tests: a small state model converted to ORT, and its float reference."""

from __future__ import annotations

from pathlib import Path

import chain
import models

from edgetqs.runtimes.convert import convert
from edgetqs.validation.reference import make_reference


def ort_artifact(tmp_path: Path, horizon: int = 10):
    """(artifact path, Reference, model) for deep_mlp planned at 40% of fp32 on the Pi and converted to ORT."""
    c = chain.scored(models.deep_mlp(tmp_path / "d.onnx"), k=3, span=(0.0, 0.8))
    r = convert(c.model, c.plan(ratio=0.4), "ort", tmp_path / "art", c.contexts, c.spec)
    return tmp_path / "art" / r.artifact, make_reference(c.model, c.spec, c.contexts, horizon), c.model
