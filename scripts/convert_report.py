"""Every bundled example in every format: sizes, read-back, host-runtime error vs simulated quantization.

    python scripts/convert_report.py [--ratio 0.25] [--examples ...]

For each example: score (gauss, tensor groups), plan at --ratio of fp32 on the raspberrypi target for
the format's runtime (ort, ort-mobile, tflite), convert, and print weight bytes and file bytes beside
fp32, whether every planned precision was found on read-back, the artifact's rollout error on the host
runtime beside the plan's simulated-quantization error, their largest difference, and the time.
Then the full-integer TFLite-Micro format on each microcontroller target (--mcu), with the tensor
arena found by bisection beside the interpreter's own report and the target's RAM budget.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", default="lorenz96,station,blizzard")
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--mcu", default="stm32h743,esp32s3,nrf52840", help="microcontroller targets for the tflm format ('' for none)")
    a = ap.parse_args()

    from edgetqs.allocation.plan import InfeasibleBudgetError, PlanOptions, make_plan
    from edgetqs.allocation.targets import find_target
    from edgetqs.core.inputs import resolve
    from edgetqs.core.project import load_project
    from edgetqs.examples import example_path
    from edgetqs.runtimes.convert import ConvertError, convert
    from edgetqs.sensitivity.scores import ProbeSettings
    from edgetqs.sensitivity.sweep import run_sweep

    pi = find_target("raspberrypi")
    print(f"plans at {a.ratio:g} of fp32 on raspberrypi, or the smallest feasible budget where that is infeasible")
    print(
        "example | format | weight B (fp32) | file B (fp32) | read-back | host err @T | simulated @T | max |artifact-simulated| | seconds"
    )
    print("--- | --- | --- | --- | --- | --- | --- | --- | ---")
    results = {}
    for name in a.examples.split(","):
        proj = load_project(example_path(name) / "edgetqs.toml")
        inp = resolve(None, proj, k=a.k)
        s = run_sweep(inp.model, inp.spec, inp.contexts, ProbeSettings(horizon=int(proj.score.get("horizon", 20))))
        for fmt, runtime in (("ort", "ort"), ("ort-mobile", "ort-mobile"), ("tflite", "tflite")):
            try:
                plan = make_plan(s, inp.model, pi, PlanOptions(runtime=runtime, ratio=a.ratio))
                label = fmt
            except InfeasibleBudgetError as exc:  # e.g. conv weights have no 4-bit kernel in ORT-mobile
                smallest = int(exc.args[0].split("smallest feasible size ")[1].split(" bytes")[0].replace(",", ""))
                plan = make_plan(s, inp.model, pi, PlanOptions(runtime=runtime, budget_bytes=smallest))
                label = f"{fmt} (smallest feasible {smallest:,} B)"
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                try:
                    r = convert(inp.model, plan, fmt, Path(d) / "out", inp.contexts, inp.spec)
                except ConvertError as exc:
                    print(f"{name} | {label} | failed: {str(exc)[:160]} | | | | | | {time.perf_counter() - t0:.1f}")
                    continue
            ok = sum(c.match for c in r.tensors)
            print(
                f"{name} | {label} | {r.weight_bytes:,} ({r.fp32_weight_bytes:,}) | {r.file_bytes:,} ({r.fp32_file_bytes:,}) | "
                f"{ok}/{len(r.tensors)} | {r.error_by_lead[-1]:.4g} | {r.simulated_error_by_lead[-1]:.4g} | {r.artifact_vs_simulated:.2g} | {r.seconds:.1f}"
            )
        results[name] = (inp, s)
    if not a.mcu:
        return
    print("\nTFLite-Micro, full integer (int8 weights; int16 activations where the target and TFLM allow)")
    print(
        "example | target | activations | weight B | file B (flash budget) | read-back | host err @T | simulated @T | "
        "arena B measured | arena B reported | RAM budget B | seconds"
    )
    print("--- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | ---")
    for name, (inp, s) in results.items():
        for tname in a.mcu.split(","):
            tg = find_target(tname)
            t0 = time.perf_counter()
            try:
                plan = make_plan(s, inp.model, tg, PlanOptions(runtime="tflm"))
                with tempfile.TemporaryDirectory() as d:
                    r = convert(inp.model, plan, "tflm", Path(d) / "out", inp.contexts, inp.spec)
            except (ConvertError, InfeasibleBudgetError) as exc:
                print(f"{name} | {tname} | failed: {str(exc)[:200]} | | | | | | | | | {time.perf_counter() - t0:.1f}")
                continue
            ok = sum(c.match for c in r.tensors)
            print(
                f"{name} | {tname} | {r.activations} | {r.weight_bytes:,} | {r.file_bytes:,} ({r.budget_bytes:,}) | {ok}/{len(r.tensors)} | "
                f"{r.error_by_lead[-1]:.4g} | {r.simulated_error_by_lead[-1]:.4g} | {r.arena_bytes:,} | {r.arena_bytes_reported:,} | "
                f"{r.ram_budget_bytes:,} | {r.seconds:.1f}"
            )


if __name__ == "__main__":
    main()
