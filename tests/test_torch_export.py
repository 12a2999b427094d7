"""A torch module is exported once (dynamo) and scored like any ONNX model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

import edgetqs
from edgetqs.core.model import export_torch, load_model


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(6, 16)
        self.dec = nn.Linear(16, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * torch.tanh(self.dec(torch.tanh(self.enc(x))))


def test_export_keeps_module_names_and_a_dynamic_batch(tmp_path: Path) -> None:
    p = export_torch(Tiny(), torch.zeros(2, 6), tmp_path / "tiny.onnx")
    m = load_model(p)
    assert {w.name for w in m.weights} == {"enc.weight", "enc.bias", "dec.weight", "dec.bias"}
    assert m.inputs[0].shape == (None, 6)


def test_score_a_torch_module_through_the_api(tmp_path: Path) -> None:
    rec = tmp_path / "r.npy"
    np.save(rec, np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32))
    s = edgetqs.score(Tiny(), rec, example_input=torch.zeros(2, 6), k=4, horizon=5, granularity="block")
    assert [g.name for g in s.groups] == ["enc", "dec"] and all(g.gamma is not None for g in s.groups)
