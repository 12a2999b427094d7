"""How stable are TQS ranks? Spearman rho between probes and between disjoint context sets.

    python scripts/score_agreement.py [--examples lorenz96,station,blizzard] [--k 8]

For each bundled example and granularity (tensor, block) it scores:
  - gauss vs quant probe (contexts from the whole record),
  - the gauss probe on two disjoint context sets (first and second half of the record),
and prints Spearman's rho of gamma (dead and diverged groups excluded) with the group counts.
"""

from __future__ import annotations

import argparse

from scipy.stats import spearmanr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", default="lorenz96,station,blizzard")
    ap.add_argument("--k", type=int, default=8)
    a = ap.parse_args()

    from edgetqs.examples import example_path
    from edgetqs.inputs import resolve
    from edgetqs.project import load_project
    from edgetqs.tqs import ProbeSettings, run_sweep

    def gammas(s):
        return {g.name: g.gamma for g in s.groups if g.gamma is not None}

    def rho(x, y):
        names = sorted(set(x) & set(y))
        return spearmanr([x[n] for n in names], [y[n] for n in names]).statistic, len(names)

    print("example | granularity | groups | rho gauss vs quant | rho contexts A vs B (gauss) | rho contexts A vs B (quant)")
    print("--- | --- | --- | --- | --- | ---")
    for name in a.examples.split(","):
        proj = load_project(example_path(name) / "edgetqs.toml")
        horizon = int(proj.score.get("horizon", 20))
        full = resolve(None, proj, k=a.k)
        half_a = resolve(None, proj, k=a.k, span="0:0.5")
        half_b = resolve(None, proj, k=a.k, span="0.5:1")
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


if __name__ == "__main__":
    main()
