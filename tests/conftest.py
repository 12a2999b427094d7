"""Shared fixtures and the test tiers.

Tiers (markers): ``slow`` (seconds to minutes: conversions through TensorFlow, the emulator), ``tflite``
(needs the `tflite` extra), ``mcu`` (needs the `mcu` extra), ``ray`` (needs the `ray` extra), ``qemu`` (needs the emulated ARM runtime from
scripts/setup-arm-emulator.sh), ``ssh`` (needs an sshd binary to start on 127.0.0.1). A test whose extra or
tool is missing is skipped with the reason, never failed. ``-m "not slow"`` runs the fast slice.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import models
import numpy as np
import pytest


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _qemu_ready() -> str | None:
    from edgetqs.validation.devices import find_device

    ok, why = find_device("qemu-pi4").ready()
    return None if ok else why


_REQUIRES = {
    "tflite": lambda: (
        f"needs the tflite extra ({', '.join(m)})" if (m := _missing("onnx2tf", "ai_edge_quantizer", "ai_edge_litert")) else None
    ),
    "mcu": lambda: f"needs the mcu extra ({', '.join(m)})" if (m := _missing("tflite_micro", "onnx2tf", "ai_edge_quantizer")) else None,
    "qemu": _qemu_ready,
    "ray": lambda: f"needs the ray extra ({', '.join(m)})" if (m := _missing("ray")) else None,
    "ssh": lambda: (
        None if (shutil.which("sshd") or Path("/usr/sbin/sshd").exists()) and shutil.which("ssh") else "needs openssh-server and -client"
    ),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons: dict[str, str | None] = {}
    for item in items:
        for marker, probe in _REQUIRES.items():
            if item.get_closest_marker(marker) is None:
                continue
            if marker not in reasons:
                reasons[marker] = probe()
            if reasons[marker]:
                why = f"{marker}: {reasons[marker]}"
                # CI installs every tier (scripts/setup.sh): a missing one there is a setup bug, not a reason to skip
                item.add_marker(pytest.mark.tier_missing(why) if os.environ.get("CI") else pytest.mark.skip(reason=why))


@pytest.fixture(autouse=True)
def _tier_present(request: pytest.FixtureRequest) -> None:
    m = request.node.get_closest_marker("tier_missing")
    if m is not None:
        pytest.fail(f"{m.args[0]} (CI: scripts/setup.sh should have installed it)")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Score caches and error logs of the tests never touch the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGETQS_CACHE_DIR", str(tmp_path_factory.mktemp("edgetqs-cache")))
    yield
    mp.undo()


@pytest.fixture
def state_model(tmp_path: Path) -> Path:
    return models.state_mlp(tmp_path / "state.onnx")


@pytest.fixture
def record(tmp_path: Path) -> Path:
    p = tmp_path / "record.npy"
    np.save(p, np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32))
    return p


@pytest.fixture
def chain():
    """The score -> plan chain most tests start from (`chain.Chain`)."""
    import chain as c

    return c
