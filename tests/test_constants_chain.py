"""Constants (masks, ranges, zeros, shape values) through score -> plan -> convert: listed with the reason,
never scored or planned, stored bit-exact in every artifact; readable names in the tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import chain
import models
import numpy as np
import pytest

from edgetqs.allocation.targets import find_target
from edgetqs.runtimes.convert import convert
from edgetqs.runtimes.readback import float_initializers

EXE = [sys.executable, "-m", "edgetqs.cli"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(EXE + list(args), capture_output=True, text=True, env={**os.environ, "COLUMNS": "220"}, timeout=300)


@pytest.mark.parametrize("fmt", ["ort", "ort-mobile"])
def test_constants_are_listed_unplanned_and_stored_exactly(tmp_path: Path, fmt: str) -> None:
    c = chain.scored(models.masked_window(tmp_path / "mw.onnx"), k=3, horizon=4, rows=60)
    s = c.scores  # scoring the -inf mask used to end in a traceback (noise added to -inf)
    assert [g.name for g in s.groups] == ["val_12", "dec.weight"]
    assert {e.name: e.reason for e in s.excluded}["mask"].startswith("holds 28 infinite")
    assert s.groups[0].label == "enc.proj (MatMul node_MatMul_5) weight" and s.groups[0].display.endswith("[val_12]")
    assert s.groups[1].label == ""  # its name is already a module path
    plan = c.plan(runtime=fmt, ratio=0.8)
    assert {t.name for t in plan.tensors} == {"val_12", "dec.weight"} and len(plan.excluded) == 4
    r = convert(c.model, plan, fmt, tmp_path / "out", c.contexts, c.spec)
    consts = [t for t in r.tensors if t.planned == "exact (constant)"]
    assert sorted(t.name for t in consts) == ["mask", "range_3", "shape_f", "zeros_like_3"]
    assert all(t.found == "exact" and t.match for t in consts) and r.all_match
    stored = float_initializers(tmp_path / "out" / r.artifact, {"mask", "range_3"})
    assert np.array_equal(stored["mask"], c.model.constant_array("mask")) and np.isneginf(stored["mask"][0, 7])
    assert np.array_equal(stored["range_3"], np.arange(2, dtype=np.float32))


def test_a_plan_refuses_an_artifact_model_read_with_other_rules(tmp_path: Path) -> None:
    c = chain.scored(models.masked_window(tmp_path / "mw.onnx"), k=3, horizon=4, rows=60)
    from edgetqs.allocation.plan import PlanOptions, make_plan
    from edgetqs.errors import EdgetqsError

    other = c.model.select((), ("dec.weight",))
    plan = make_plan(c.scores, other, find_target("raspberrypi"), PlanOptions(exclude=("dec.weight",), ratio=0.9))
    assert "dec.weight" in {e.name for e in plan.excluded} and [t.name for t in plan.tensors] == ["val_12"]
    with pytest.raises(EdgetqsError, match="--include/--exclude"):
        convert(c.model, plan, "ort", tmp_path / "o", c.contexts, c.spec)
    r = convert(other, plan, "ort", tmp_path / "o2", c.contexts, c.spec)  # read with the plan's rules: dec.weight stays exact
    assert next(t for t in r.tensors if t.name == "dec.weight").found == "exact" and r.all_match


def test_cli_score_plan_show_readable_names_constants_and_rules(tmp_path: Path) -> None:
    p = models.masked_window(tmp_path / "mw.onnx")
    rec = chain.record_for(tmp_path / "r.npy", 60, 1)
    out = tmp_path / "s.json"
    r = _cli("score", str(p), "-c", str(rec), "-k", "3", "-T", "4", "-o", str(out), "--exclude", "re:^dec\\.")
    assert r.returncode == 0, r.stderr
    assert "enc.proj (MatMul node_MatMul_5) weight [val_12]" in r.stdout
    assert "constants" in r.stdout and "attention mask" in r.stdout and "excluded by --exclude re:^dec\\." in r.stdout
    d = json.loads(out.read_text())
    assert d["settings"]["exclude"] == ["re:^dec\\."] and len(d["excluded"]) == 5
    r = _cli("plan", str(out), "--model", str(p), "--ratio", "0.9", "-t", "raspberrypi", "-o", str(tmp_path / "plan.json"))
    assert r.returncode == 0, r.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["options"]["exclude"] == ["re:^dec\\."] and [t["name"] for t in plan["tensors"]] == ["val_12"]
    assert plan["tensors"][0]["label"].startswith("enc.proj")
    bad = models.masked_window(tmp_path / "bad.onnx", bad="nan")
    r = _cli("score", str(bad), "-c", str(rec), "-k", "3", "-T", "4", "-o", str(tmp_path / "b.json"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "weight 'dec.weight'" in r.stderr and "NaN" in r.stderr and "--exclude dec.weight" in r.stderr
