"""How stable are TQS ranks? Spearman rho between probes and between disjoint context sets.

    python scripts/score_agreement.py [--examples lorenz96,station,blizzard] [--k 8]

For each bundled example and granularity (tensor, block) it scores:
  - gauss vs quant probe (contexts from the whole record),
  - the gauss probe on two disjoint context sets (first and second half of the record),
and prints Spearman's rho of gamma (dead and diverged groups excluded) with the group counts.

Then the test that would settle it: score on the first half of the record, quantize each tensor
group *alone* to 4 bits per output channel (everything else float), measure the rollout error at the
horizon on the second half, and print Spearman's rho between that measured error and (a) gamma,
(b) the error the planner predicts for it, A_g * r_g(int4), for both probes.
"""

from __future__ import annotations

import argparse

from _examples import halves  # scripts/ is on sys.path when a script runs
from scipy.stats import spearmanr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", default="lorenz96,station,blizzard")
    ap.add_argument("--k", type=int, default=8)
    a = ap.parse_args()

    from edgetqs.core.inputs import resolve
    from edgetqs.sensitivity.scores import ProbeSettings
    from edgetqs.sensitivity.sweep import run_sweep

    def gammas(s):
        return {g.name: g.gamma for g in s.groups if g.gamma is not None}

    def rho(x, y):
        names = sorted(set(x) & set(y))
        return spearmanr([x[n] for n in names], [y[n] for n in names]).statistic, len(names)

    print("example | granularity | groups | rho gauss vs quant | rho contexts A vs B (gauss) | rho contexts A vs B (quant)")
    print("--- | --- | --- | --- | --- | ---")
    for name in a.examples.split(","):
        proj, horizon, half_a, half_b = halves(name, a.k)
        full = resolve(None, proj, k=a.k)
        for gran in ("tensor", "block"):
            st = {p: ProbeSettings(probe=p, horizon=horizon, granularity=gran) for p in ("gauss", "quant")}
            g = gammas(run_sweep(full.model, full.spec, full.contexts, st["gauss"]))
            q = gammas(run_sweep(full.model, full.spec, full.contexts, st["quant"]))
            r_pq, n = rho(g, q)
            ctx = {}
            for p in ("gauss", "quant"):
                ga = gammas(run_sweep(half_a.model, half_a.spec, half_a.contexts, st[p]))
                gb = gammas(run_sweep(half_b.model, half_b.spec, half_b.contexts, st[p]))
                ctx[p] = rho(ga, gb)[0]
            print(f"{name} | {gran} | {n} | {r_pq:.3f} | {ctx['gauss']:.3f} | {ctx['quant']:.3f}")
    print()
    print(
        "example | groups | rho(gamma, measured) gauss | rho(A*r, measured) gauss | rho(gamma, measured) quant | rho(A*r, measured) quant | "
        "most harmful group alone (measured error)"
    )
    print("--- | --- | --- | --- | --- | --- | ---")
    import numpy as np

    from edgetqs.allocation.evaluate import measure
    from edgetqs.core.quantize import fake_quant, parse_precision, residual_rms
    from edgetqs.core.rollout import Rollout

    p4 = parse_precision("int4-channel")
    eps_rows: list[str] = []
    for name in a.examples.split(","):
        _, horizon, train, held = halves(name, a.k)
        m = train.model
        ref = Rollout(m, held.spec, held.contexts.statics, model_bytes=m.bytes).run(held.contexts.arrays, horizon).steps
        sc = {p: run_sweep(m, train.spec, train.contexts, ProbeSettings(probe=p, horizon=horizon)) for p in ("gauss", "quant")}
        measured = {}
        for g in sc["gauss"].groups:
            w = {t: fake_quant(m.weight_array(t), p4, m.layout(t)) for t in g.tensors}
            measured[g.name] = measure(m, held.spec, held.contexts, w, horizon, ref).error_at_horizon
        cols = []
        for p in ("gauss", "quant"):
            gam = {
                g.name: (np.inf if g.diverged_step is not None else g.gamma)
                for g in sc[p].groups
                if g.gamma is not None or g.diverged_step is not None
            }
            pred = {}
            for g in sc[p].groups:
                r = float(
                    np.sqrt(
                        sum(residual_rms(m.weight_array(t), p4, m.layout(t)) ** 2 * m.weight_array(t).size for t in g.tensors) / g.n_params
                    )
                )
                pred[g.name] = np.inf if g.diverged_step is not None else (g.gain or 0.0) * r
            cols += [rho(gam, measured)[0], rho(pred, measured)[0]]
        worst = max(measured, key=lambda k: measured[k])
        print(f"{name} | {len(measured)} | " + " | ".join(f"{c:.3f}" for c in cols) + f" | {worst} ({measured[worst]:.3g})")
        # gamma's initial separation: eps relative to rms(W) (the default) against eps in weight units
        g = sc["gauss"]
        rel = {x.name: x.gamma for x in g.groups if x.gamma is not None}
        absolute = {x.name: x.gamma - np.log(x.weight_rms) / g.horizon for x in g.groups if x.gamma is not None and x.weight_rms > 0}
        eps_rows.append(f"{name} | {rho(rel, measured)[0]:.3f} | {rho(absolute, measured)[0]:.3f}")
    print()
    print("example | rho(gamma, measured), eps relative to rms(W) | rho(gamma, measured), eps in weight units (gauss probe)")
    print("--- | --- | ---")
    for row in eps_rows:
        print(row)


if __name__ == "__main__":
    main()
