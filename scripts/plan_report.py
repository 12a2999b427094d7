"""Plans for every bundled example on every target, and predicted vs measured error on a Pareto front.

    python scripts/plan_report.py [--examples ...] [--budgets 10] [--k 8]

Scores each example on the first half of its record and measures on the second half (held out).
Part 1: for each example x target: the target's budget and also 25% of fp32: bytes, exact and
greedy predicted error, time per plan. Part 2: a Pareto front of --budgets plans (ort runtime) with
predicted error beside the error measured by simulated quantization: Spearman rho and the largest
ratio between them.
"""

from __future__ import annotations

import argparse

import numpy as np
from _examples import halves  # scripts/ is on sys.path when a script runs
from scipy.stats import spearmanr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", default="lorenz96,station,blizzard")
    ap.add_argument("--budgets", type=int, default=10)
    ap.add_argument("--k", type=int, default=8)
    a = ap.parse_args()

    from edgetqs.allocation.evaluate import measure, simulated_weights
    from edgetqs.allocation.plan import InfeasibleBudgetError, PlanOptions, make_plan, pareto
    from edgetqs.allocation.targets import load_target, target_files
    from edgetqs.core.rollout import Rollout
    from edgetqs.sensitivity.scores import ProbeSettings
    from edgetqs.sensitivity.sweep import run_sweep

    targets = [load_target(f) for f in target_files()]
    print("example | target | budget B | weights B | fp32 B | exact E | greedy E | exact ms | greedy ms")
    print("--- | --- | --- | --- | --- | --- | --- | --- | ---")
    fronts = []
    for name in a.examples.split(","):
        _, horizon, train, held = halves(name, a.k)
        scores = run_sweep(train.model, train.spec, train.contexts, ProbeSettings(horizon=horizon))
        m = train.model
        for t in targets:
            for label, opts in (("target", PlanOptions()), ("25% fp32", PlanOptions(ratio=0.25))):
                try:
                    e = make_plan(scores, m, t, opts)
                    g = make_plan(scores, m, t, PlanOptions(**{**opts.__dict__, "allocator": "greedy"}))
                except InfeasibleBudgetError as exc:
                    print(f"{name} | {t.name} ({label}) | infeasible: {str(exc).split(';')[0]}")
                    continue
                assert e.weight_bytes <= e.budget_bytes and g.weight_bytes <= g.budget_bytes
                pe = "unbounded" if e.predicted_error is None else f"{e.predicted_error:.4g}"
                pg = "unbounded" if g.predicted_error is None else f"{g.predicted_error:.4g}"
                print(
                    f"{name} | {t.name} ({label}) | {e.budget_bytes:,} | {e.weight_bytes:,} | {e.fp32_bytes:,} | {pe} | {pg} | "
                    f"{e.solve_seconds * 1e3:.1f} | {g.solve_seconds * 1e3:.1f}"
                )
        pi = next(t for t in targets if t.name == "raspberrypi")
        front = pareto(scores, m, pi, PlanOptions(), a.budgets)
        ref = Rollout(m, held.spec, held.contexts.statics, model_bytes=m.bytes).run(held.contexts.arrays, horizon).steps
        meas = [measure(m, held.spec, held.contexts, simulated_weights(m, p), horizon, ref).error_at_horizon for p in front]
        fronts.append((name, front, meas))
    print()
    print(
        "example | budgets | Spearman rho (predicted vs measured) | largest ratio (finite pairs) | per budget: bytes, predicted, measured"
    )
    print("--- | --- | --- | --- | ---")
    for name, front, meas in fronts:
        pred = [p.predicted_error for p in front]
        pairs = [(p, q) for p, q in zip(pred, meas) if p and q and np.isfinite(p) and np.isfinite(q)]
        ratio = max(max(p / q, q / p) for p, q in pairs)
        rho = spearmanr([np.inf if p is None else p for p in pred], meas).statistic  # a diverged rollout ranks as the worst
        detail = "; ".join(f"{p.weight_bytes}: {pp:.3g}/{q:.3g}" for p, pp, q in zip(front, pred, meas))
        print(f"{name} | {len(front)} | {rho:.3f} | {ratio:.2f} | {detail}")


if __name__ == "__main__":
    main()
