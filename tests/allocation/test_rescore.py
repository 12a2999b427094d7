"""In-context re-scoring: a plan measured with the rest of the plan quantized, re-solved, guarded."""

from __future__ import annotations

from pathlib import Path

import models
import numpy as np
import pytest

from edgetqs.allocation.evaluate import evaluate
from edgetqs.allocation.knapsack import InfeasibleBudgetError
from edgetqs.allocation.plan import PlanOptions, make_plan
from edgetqs.allocation.rescore import RescoreSettings, _split, rescore
from edgetqs.allocation.targets import load_target
from edgetqs.core.contexts import read_record, select_contexts
from edgetqs.core.model import load_model
from edgetqs.core.rollout import infer_spec
from edgetqs.sensitivity.scores import ProbeSettings
from edgetqs.sensitivity.sweep import run_sweep

MENU = '["fp32", "int8-channel", "int6-channel", "int5-channel", "int4-channel", "int3-channel", "int2-channel"]'


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("rescore")
    m = load_model(models.deep_mlp(d / "wide.onnx", hidden=64, layers=4))
    spec = infer_spec(m)
    np.save(d / "r.npy", np.random.default_rng(3).standard_normal((400, 8)).astype(np.float32))
    from edgetqs.core.contexts import Contexts  # noqa: F401

    rec = read_record(d / "r.npy", spec)
    score_ctx = select_contexts(rec, m, spec, 16, span=(0.0, 0.5))
    held = select_contexts(rec, m, spec, 16, span=(0.5, 1.0))
    s = run_sweep(m, spec, score_ctx, ProbeSettings(horizon=8))
    (d / "t.toml").write_text(
        f'name = "t"\narch = "any"\nruntimes = ["ort"]\nweight_budget_bytes = 1000000\nram_budget_bytes = 1000000\n[precisions.ort]\ndefault = {MENU}\n'
    )
    return m, spec, score_ctx, held, s, load_target(d / "t.toml")


def test_guard_contexts_are_held_back_and_spread() -> None:
    search, guard = _split(12, 0.25)
    assert len(guard) == 3 and set(search) | set(guard) == set(range(12)) and not set(search) & set(guard)
    assert guard[0] == 0 and guard[-1] == 11


def test_rescoring_fits_the_budget_improves_search_and_guard_and_records_its_cost(setup) -> None:
    m, spec, ctx, _, s, t = setup
    opts = PlanOptions(ratio=0.16)
    plan = rescore(s, m, t, opts, spec, ctx, settings=RescoreSettings(rollout_budget=150))
    assert plan.weight_bytes <= plan.budget_bytes
    info = plan.refinement
    assert info["method"] == "in-context re-scoring" and info["rollouts"] <= 150 + 10 and info["seconds"] > 0
    assert info["search_contexts"] == 12 and info["guard_contexts"] == 4
    accepted = [st for st in info["steps"] if st["accepted"]]
    errs = [info["steps"][0]["search_error"]] + [st["search_error"] for st in accepted]
    assert all(b < a for a, b in zip(errs, errs[1:]))  # every accepted step lowered the search error
    guards = [st["guard_error"] for st in accepted]
    assert all(b < a for a, b in zip(guards, guards[1:]))
    assert "re-scored in context" in plan.notes[-1]


def test_rescoring_repairs_a_plan_whose_gains_are_wrong(setup) -> None:
    """Gains that rank the groups backwards give a bad knapsack plan; measuring in context repairs it, held out too."""
    m, spec, ctx, held, s, t = setup
    gains = sorted(g.gain for g in s.groups)
    order = sorted(s.groups, key=lambda g: g.gain)
    wrong = {g.name: gains[len(gains) - 1 - i] for i, g in enumerate(order)}
    gammas = sorted(g.gamma for g in s.groups)
    wrong_gamma = {g.name: gammas[len(gammas) - 1 - i] for i, g in enumerate(sorted(s.groups, key=lambda g: g.gamma))}
    bad = s.model_copy(
        update={"groups": tuple(g.model_copy(update={"gain": wrong[g.name], "gamma": wrong_gamma[g.name]}) for g in s.groups)}
    )
    opts = PlanOptions(ratio=0.2)
    naive = make_plan(bad, m, t, opts)
    fixed = rescore(bad, m, t, opts, spec, ctx, settings=RescoreSettings(rollout_budget=300))
    e_naive = evaluate(m, naive, spec, held, 8).error_at_horizon
    e_fixed = evaluate(m, fixed, spec, held, 8).error_at_horizon
    assert e_fixed < 0.8 * e_naive, (e_naive, e_fixed)


def test_an_infeasible_budget_is_refused_before_any_rollout(setup) -> None:
    m, spec, ctx, _, s, t = setup
    with pytest.raises(InfeasibleBudgetError):
        rescore(s, m, t, PlanOptions(budget_bytes=100), spec, ctx)


def test_build_and_plan_use_the_rescoring(setup, tmp_path: Path) -> None:
    from edgetqs.allocation.planner import plan_stage

    m, spec, ctx, _, s, t = setup
    p = plan_stage(s, m, t, PlanOptions(ratio=0.2), spec=spec, contexts=ctx, refine=True, rescore=RescoreSettings(rollout_budget=40))
    assert p.refinement and p.refinement["rollouts"] <= 50


def test_a_budget_below_one_round_still_ends_in_a_measured_step(setup) -> None:
    """A model of many tensors: the marginal damages of a whole round (5 tensors x up to 4 neighbours here) do not fit
    the rollout budget. The search measures the nearest precisions of every tensor first and keeps rollouts for the
    candidate steps, so it still tries (and here takes) a step instead of stopping with measurements alone."""
    from edgetqs.allocation.plan import build_items
    from edgetqs.allocation.rescore import _neighbours

    m, spec, ctx, _, s, t = setup
    opts = PlanOptions(ratio=0.16, runtime="ort")
    items, _ = build_items(s, m, t, opts, prune=False)
    cur = [len(it.options) // 2 for it in items]
    order = _neighbours(items, cur, 2)
    first = [d for d in (abs(k - cur[i]) for k, i in order)]
    assert first == sorted(first) and set(first) <= {1, 2}  # breadth-first: every nearest neighbour before any second one
    assert len(order) == len(set(order))
    full = sum(1 for it in items if len(it.options) > 1) * 4
    budget = full // 2 + 3  # the starts (3 rollouts) and half a round
    plan = rescore(s, m, t, opts, spec, ctx, settings=RescoreSettings(rollout_budget=budget, max_rounds=1))
    info = plan.refinement
    tried = [st for st in info["steps"] if st["kind"] != "start"]
    assert tried, info["stopped"]  # candidate steps were measured, not only marginal damages
    assert info["rollouts"] <= budget
