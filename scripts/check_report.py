"""Every bundled example, converted to ORT and TFLite (and TFLite-Micro where it fits), checked on the
host and on the emulated Raspberry Pi 4: metrics, pass/fail, latency, ORT on aarch64 vs x86.

    python scripts/check_report.py [--ratio 0.25] [--devices local,qemu-pi4] [--k 8]

Plans are made at --ratio of fp32 on the raspberrypi target (stm32h743 for tflm), scored on the first
half of each record, and checked on contexts from the second half with the target's validation
horizon and tolerance. Emulated latency is qemu's, not a board's.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _examples import halves  # scripts/ is on sys.path when a script runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", default="lorenz96,station,blizzard")
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--devices", default="local,qemu-pi4")
    ap.add_argument("--k", type=int, default=8)
    a = ap.parse_args()

    from edgetqs.allocation.plan import InfeasibleBudgetError, PlanOptions, make_plan
    from edgetqs.allocation.targets import find_target
    from edgetqs.errors import EdgetqsError
    from edgetqs.runtimes.convert import convert
    from edgetqs.sensitivity.scores import ProbeSettings
    from edgetqs.sensitivity.sweep import run_sweep
    from edgetqs.validation.check import check
    from edgetqs.validation.devices import find_device
    from edgetqs.validation.reference import contexts_with_truth, make_reference

    devices = [find_device(d) for d in a.devices.split(",")]
    print(
        "example | format | device | passed | diverges at (lead) | nRMSE q-vs-float @1 / @end | q-vs-truth @end | float-vs-truth @end | "
        "ACC q-vs-truth @end | latency p50 / p90 / p99 ms (n) | first ms | init ms | peak MiB | runtime"
    )
    print(" | ".join(["---"] * 14))
    identical = []
    for name in a.examples.split(","):
        _, horizon, score_in, check_in = halves(name, a.k)
        s = run_sweep(score_in.model, score_in.spec, score_in.contexts, ProbeSettings(horizon=horizon))
        jobs = [("ort", "raspberrypi", "ort"), ("tflite", "raspberrypi", "tflite"), ("tflm", "stm32h743", "tflm")]
        for fmt, tname, runtime in jobs:
            tg = find_target(tname)
            with tempfile.TemporaryDirectory() as d:
                try:
                    try:
                        plan = make_plan(s, score_in.model, tg, PlanOptions(runtime=runtime, ratio=a.ratio))
                    except InfeasibleBudgetError:
                        plan = make_plan(s, score_in.model, tg, PlanOptions(runtime=runtime))
                    c = convert(score_in.model, plan, fmt, Path(d), check_in.contexts, check_in.spec)
                except EdgetqsError as exc:
                    print(f"{name} | {fmt} | - | not converted: {str(exc)[:140]} |" + " |" * 10)
                    continue
                ctx = contexts_with_truth(check_in, tg.validation_horizon, span=(0.5, 1.0))
                ref = make_reference(check_in.model, check_in.spec, ctx, tg.validation_horizon)
                trajs = {}
                for dev in devices:
                    try:
                        r, traj = check(Path(d) / c.artifact, ref, dev, tg.validation_tolerance, target=tname, arena_bytes=c.arena_bytes)
                    except EdgetqsError as exc:
                        print(f"{name} | {fmt} | {dev.name} | error: {str(exc)[:140]} |" + " |" * 10)
                        continue
                    trajs[dev.name] = traj
                    q = r.rows["quantized_vs_float"]
                    qt, ft = r.rows.get("quantized_vs_truth"), r.rows.get("float_vs_truth")

                    def g(v):
                        return "NaN" if v is None else f"{v:.3g}"

                    acc = "-" if not qt or not qt["acc"] else g(float(np.nanmean([np.nan if v is None else v for v in qt["acc"][-1]])))
                    lat = r.latency_ms
                    print(
                        f"{name} | {fmt} | {dev.name}{' (emulated)' if r.emulated else ''} | {'PASS' if r.passed else 'FAIL'} | "
                        f"{q['divergence_lead'] or '-'} of {r.leads} | {g(q['nrmse_by_lead'][0])} / {g(q['nrmse_by_lead'][-1])} | "
                        f"{g(qt['nrmse_by_lead'][-1]) if qt else '-'} | {g(ft['nrmse_by_lead'][-1]) if ft else '-'} | {acc} | "
                        f"{lat['p50']:.3g} / {lat['p90']:.3g} / {lat['p99']:.3g} ({lat['n']}) | {r.latency_ms_first:.3g} | {r.latency_ms_init:.0f} | "
                        f"{r.peak_rss_bytes / 2**20:.0f} | {r.runtime.get('name')} {r.runtime.get('version')}"
                    )
                if "local" in trajs and len(trajs) > 1:
                    for other, t in trajs.items():
                        if other == "local":
                            continue
                        diffs = [float(np.nanmax(np.abs(t[k].astype(np.float64) - trajs["local"][k]))) for k in t]
                        same = all(np.array_equal(t[k], trajs["local"][k]) for k in t)
                        identical.append(
                            f"{name} {fmt}: {other} vs local x86: {'bit-identical' if same else f'max |diff| {max(diffs):.3g}'}"
                        )
    print()
    for line in identical:
        print(line)


if __name__ == "__main__":
    main()
