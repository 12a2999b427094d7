"""Time per plan as the number of groups grows (exact MILP vs greedy).

    python scripts/bench_plan.py [--groups 100,1000,3000] [--target raspberrypi]

Builds a chain of Gemm layers with ``groups`` weight tensors (weights and biases), gives each group a
random TQS gain (the planner's speed does not depend on where the gains came from), and times
make_plan at a budget of 30% of fp32: preparation (sizes and residuals of every option) and the solve,
for both allocators, with the predicted error of each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def chain_model(path: Path, tensors: int, width: int = 16) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(tensors // 2):
        inits += [
            numpy_helper.from_array((rng.standard_normal((width, width)) / 4).astype(np.float32), f"l{i}.weight"),
            numpy_helper.from_array((0.1 * rng.standard_normal(width)).astype(np.float32), f"l{i}.bias"),
        ]
        nodes.append(helper.make_node("Gemm", [prev, f"l{i}.weight", f"l{i}.bias"], [f"h{i}"], transB=1))
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    g = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", width])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def synthetic_scores(model):
    from edgetqs.core.rollout import RolloutSpec
    from edgetqs.sensitivity.scores import GroupScore, ProbeSettings, Scores, StateExponent

    rng = np.random.default_rng(1)
    groups = tuple(
        GroupScore(
            name=w.name,
            tensors=(w.name,),
            n_params=w.size,
            gamma=float(rng.normal(0.1, 0.05)),
            gamma_curve=(0.0,),
            gain=float(rng.lognormal(2, 1)),
            eps=1e-3,
            dead=False,
            diverged_step=None,
            probe="gauss",
        )
        for w in model.weights
    )
    from edgetqs.core.contexts import ContextsInfo

    return Scores(
        edgetqs_version="bench",
        model=model.name,
        model_sha256=model.sha256,
        rollout=RolloutSpec(mode="state", pairs=(("x", "y"),)),
        settings=ProbeSettings(),
        horizon=20,
        horizon_rule="fixed",
        contexts=ContextsInfo(source="bench", k=8, start_indices=(), variables=(), shape=()),
        groups=groups,
        state_exponent=StateExponent(exponent=0.0, curve=(0.0,), eps=1e-3, error_curve=(0.0,)),
        wall_seconds=0.0,
        forward_calls=0,
        workers=1,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", default="100,1000,3000")
    ap.add_argument("--target", default="raspberrypi")
    a = ap.parse_args()

    from edgetqs.allocation.plan import PlanOptions, build_items, make_plan
    from edgetqs.allocation.targets import find_target
    from edgetqs.core.model import load_model

    target = find_target(a.target)
    print("groups | options/tensor | prepare s | exact s (total) | greedy s (total) | exact E | greedy E | greedy/exact")
    print("--- | --- | --- | --- | --- | --- | --- | ---")
    import importlib

    importlib.import_module("scipy.optimize")  # import cost stays out of the timings

    for n in (int(x) for x in a.groups.split(",")):
        with tempfile.TemporaryDirectory() as d:
            model = load_model(chain_model(Path(d) / "chain.onnx", n))
            scores = synthetic_scores(model)
            t0 = time.perf_counter()
            items, _ = build_items(scores, model, target, PlanOptions(ratio=0.3))
            prep = time.perf_counter() - t0
            opts_per = np.mean([len(it.options) for it in items])
            e = make_plan(scores, model, target, PlanOptions(ratio=0.3))
            g = make_plan(scores, model, target, PlanOptions(ratio=0.3, allocator="greedy"))
            print(
                f"{len(model.weights)} | {opts_per:.1f} | {prep:.3f} | {e.solve_seconds - prep:.3f} ({e.solve_seconds:.3f}) | "
                f"{g.solve_seconds - prep:.3f} ({g.solve_seconds:.3f}) | {e.predicted_error:.5g} | {g.predicted_error:.5g} | "
                f"{g.predicted_error / e.predicted_error:.4f}"
            )
    print("solve = total minus preparation (sizes and residuals of every allowed precision of every tensor).")


if __name__ == "__main__":
    main()
