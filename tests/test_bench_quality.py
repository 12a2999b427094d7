"""scripts/bench_quality.py: what a run saves is what --merge reports from (examples run as separate processes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_quality as bq  # scripts/ is not a package: imported by path


def _example(name: str) -> bq.Example:
    ex = bq.Example(name, 6, None, None, ["a", "b"], n_weights=1234, n_tensors=5, k_score=32, k_held=48)
    ex.costs = {"sweep": (1.5, 72), "ladder": None, "hessian": (3.0, 16), "rescore rtn": [(10.0, 97), (12.0, 100)]}
    ex.budgets = {4: 1000, 8: 2000}
    ex.buffers = ["in_mean"]
    return ex


def test_saved_results_load_back_exactly_and_merge_across_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    runs = []
    for name in ("p", "s"):
        ex = _example(name)
        errs = {m: (rng.random(48), rng.random((48, 2))) for m in ("tqs", "tqs-rescored", "uniform")}
        errs["uniform"][0][3] = np.inf  # a diverged context stays inf
        results = {"rtn": {(name, 4): errs}}
        plans = {
            "rtn": {(name, 4): {"tqs": {"w": "int4-channel"}, "tqs-rescored": {"w": "int5-channel"}, "uniform": {"w": "int4-channel"}}}
        }
        path = tmp_path / f"{name}.json"
        bq.save_results(path, [ex], results, plans, {"examples": name, "bits": "4", "ladder": ""})
        runs.append((path, ex, errs, plans))
    exs, results, plans, args = bq.load_results([p for p, *_ in runs])
    assert [e.name for e in exs] == ["p", "s"] and [a["examples"] for a in args] == ["p", "s"]
    for (_path, ex, errs, pl), got in zip(runs, exs):
        assert json.loads(json.dumps(got.to_json())) == json.loads(json.dumps(ex.to_json()))
        assert got.budgets == {4: 1000, 8: 2000} and got.costs["ladder"] is None
        for m, (per_c, per_cv) in errs.items():
            np.testing.assert_array_equal(results["rtn"][(ex.name, 4)][m][0], per_c)
            np.testing.assert_array_equal(results["rtn"][(ex.name, 4)][m][1], per_cv)
        assert plans["rtn"][(ex.name, 4)] == pl["rtn"][(ex.name, 4)]
    assert "--ladder ''" in " ".join(bq._command(args[0]))
