"""Which layer's int8 activations cost a static-QDQ ONNX Runtime artifact its rollout accuracy: a by-hand view of
what `edgetqs.allocation.activations` measures (convert.json ``facts.activation_choice`` holds the TQS of every
activation group and the ladder's trials).

For one bundled example: plan for the Raspberry Pi's ONNX Runtime at --ratio of fp32 with int8 weights and
``activations="int8"``, build the weight-only graph and the static QDQ graph (`edgetqs.runtimes.ort_static`), and
print the worst normalised RMSE over --horizon leads against the float rollout (the project's contexts) for:
weight-only, every kernel op's activations int8, each op's activations alone int8, and all but each op.

    PYTHONPATH=. python scripts/act_sensitivity.py lorenz96 --ratio 0.3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("example")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--horizon", type=int, default=20)
    ap.add_argument("--k", type=int, default=4)
    a = ap.parse_args()

    from edgetqs.allocation.plan import PlanOptions, make_plan
    from edgetqs.allocation.targets import find_target
    from edgetqs.core.inputs import resolve
    from edgetqs.core.metrics import nrmse_by_lead
    from edgetqs.core.project import load_project
    from edgetqs.core.rollout import Rollout, float_reference
    from edgetqs.examples import example_path
    from edgetqs.ondevice.runners import OrtRunner
    from edgetqs.runtimes.base import ConvertJob
    from edgetqs.runtimes.ort import qdq_model
    from edgetqs.runtimes.ort_static import static_qdq
    from edgetqs.sensitivity.scores import ProbeSettings
    from edgetqs.sensitivity.sweep import run_sweep

    inp = resolve(None, load_project(example_path(a.example) / "edgetqs.toml"), k=a.k)
    scores = run_sweep(inp.model, inp.spec, inp.contexts, ProbeSettings(horizon=min(a.horizon, 10)))
    pi = find_target("raspberrypi")
    plan = make_plan(scores, inp.model, pi, PlanOptions(runtime="ort", ratio=a.ratio, lowest_bits=8, activations="int8"))
    job = ConvertJob(inp.model, plan, Path("."), "unused.onnx", inp.contexts, inp.spec, a.horizon, pi, "int8")
    prep = job.prepared("ort")
    weight_only, _, _ = qdq_model(prep.model, plan)
    ref = float_reference(inp.model, inp.spec, inp.contexts, a.horizon)

    def worst(data: bytes) -> float:
        # unoptimised: the integer arithmetic exactly (this host's u8 x s8 kernels may saturate; ARM's do not)
        session = OrtRunner(data, threads=0, optimize=False)
        got = Rollout(inp.model, inp.spec, inp.contexts.statics, session=session).run(inp.contexts.arrays, a.horizon)
        lead = nrmse_by_lead(got.steps, ref.steps, inp.contexts.spreads, inp.spec.mode, inp.spec.channel_axis)
        return float(np.nanmax(np.asarray(lead, dtype=np.float64)))

    full, facts = static_qdq(weight_only, prep.model.proto, job.rows(), exact=True)
    ops = list(facts["quantized_nodes"])
    print(f"{a.example} at {a.ratio:g} of fp32, worst NRMSE over {a.horizon} leads vs float, k={a.k} contexts of the project")
    print("| activations int8 | worst NRMSE |\n|---|---:|")
    print(f"| none (weight-only) | {worst(weight_only):.3f} |")
    print(f"| all {len(ops)} kernel ops | {worst(full):.3f} |")
    for op in ops:
        only, _ = static_qdq(weight_only, prep.model.proto, job.rows(), keep_float=set(ops) - {op}, exact=True)
        print(f"| only {op} | {worst(only):.3f} |")
        if len(ops) > 1:
            rest, _ = static_qdq(weight_only, prep.model.proto, job.rows(), keep_float={op}, exact=True)
            print(f"| all but {op} | {worst(rest):.3f} |", flush=True)


if __name__ == "__main__":
    main()
