"""The bundled examples: they load, score from their project file, and `edgetqs init` works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetqs.core.inputs import resolve
from edgetqs.core.project import load_project
from edgetqs.errors import BadInputError
from edgetqs.examples import example_path, init_project, list_examples
from edgetqs.sensitivity.scores import ProbeSettings
from edgetqs.sensitivity.sweep import run_sweep

NAMES = ["lorenz96", "station", "blizzard", "patchtst", "seaice", "station-tod"]


def test_all_examples_are_bundled() -> None:
    assert sorted(e.name for e in list_examples()) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_example_scores_from_its_project_file(name: str) -> None:
    proj = load_project(example_path(name) / "edgetqs.toml")
    inp = resolve(None, proj, k=3)
    s = run_sweep(inp.model, inp.spec, inp.contexts, ProbeSettings(horizon=4, granularity="block"))
    assert len(s.groups) >= 5 and not any(g.dead for g in s.groups)
    assert all(g.gamma is not None for g in s.groups)
    assert inp.contexts.variables  # names carried through


@pytest.mark.parametrize("name", NAMES)
def test_model_card_reports_skill_against_persistence(name: str) -> None:
    card = json.loads((example_path(name) / "card.json").read_text())
    assert card["n_params"] > 1000 and len(card["skill"]) >= 3
    md = (example_path(name) / "card.md").read_text()
    assert "persistence" in md and card["data"] in md


def _score_small(d: Path) -> subprocess.CompletedProcess[str]:
    """`edgetqs score` in project folder ``d`` with 3 contexts and 3 steps (a quick check that the project scores)."""
    return subprocess.run(
        [sys.executable, "-m", "edgetqs.cli", "score", "-k", "3", "-T", "3", "-q"],
        cwd=d,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_init_writes_a_project_that_scores(tmp_path: Path) -> None:
    d = tmp_path / "proj"
    r = subprocess.run([sys.executable, "-m", "edgetqs.cli", "init", str(d), "--example", "station"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert {p.name for p in d.iterdir()} == {"model.onnx", "contexts.npz", "edgetqs.toml", "card.md"}
    r = _score_small(d)
    assert r.returncode == 0, r.stderr
    assert json.loads((d / "scores.json").read_text())["contexts"]["variables"][0] == "temp_air"
    again = subprocess.run([sys.executable, "-m", "edgetqs.cli", "init", str(d), "--example", "station"], capture_output=True, text=True)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_init_station_tod_scores_with_the_forcing_its_project_file_declares(tmp_path: Path) -> None:
    d = tmp_path / "proj"
    r = subprocess.run([sys.executable, "-m", "edgetqs.cli", "init", str(d), "--example", "station-tod"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert 'forcing = ["tod=hour_of_day@predicted"]' in (d / "edgetqs.toml").read_text()
    with np.load(d / "contexts.npz") as z:
        assert z["time"].dtype.kind == "M" and len(z["time"]) == len(z["record"])
    r = _score_small(d)
    assert r.returncode == 0, r.stderr
    spec = json.loads((d / "scores.json").read_text())["rollout"]
    assert spec["forcings"] == [{"input": "tod", "sources": [{"kind": "hour_of_day", "columns": []}], "align": "predicted"}]


def test_unknown_example_lists_the_bundled_ones(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="lorenz96"):
        init_project(tmp_path, "pangu")
