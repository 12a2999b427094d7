from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import models  # noqa: E402


@pytest.fixture
def state_model(tmp_path: Path) -> Path:
    return models.state_mlp(tmp_path / "state.onnx")


@pytest.fixture
def record(tmp_path: Path) -> Path:
    import numpy as np

    p = tmp_path / "record.npy"
    np.save(p, np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32))
    return p
