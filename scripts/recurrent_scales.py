"""Recurrent weights at int8: one scale per gate row (the channel axis `edgetqs.core.model.CHANNEL_AXES` gives
GRU/LSTM/RNN W, R, B) against one scale per tensor (what axis 0, of size 1, gave before), on the ORT route.

    python scripts/recurrent_scales.py [--hidden 80] [--epochs 3] [-k 8] [--horizon 20]

The one-step GRU and LSTM of ``tests/realmodels.py`` (x[B, 48, 5] -> y[B, 5], legacy export; hidden 80: the
GRU has about 22 k parameters, as the one of issue 18) are trained for a
few epochs on five standardised variables of the station example's TMY3 record (the first 60 % of the year),
then every W/R/B of the recurrent cell is planned int8 per row or per tensor, everything else fp32, converted
to an ONNX Runtime artifact and rolled out from K windows of the last 20 % (a stack of windows [N, 48, 5]
in an .npy, as users pass them). Prints the normalised RMSE of the artifact against the float model per lead.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    import realmodels

    from edgetqs.allocation.plan import PlanOptions, make_plan, parse_pin
    from edgetqs.allocation.targets import find_target
    from edgetqs.core.inputs import resolve
    from edgetqs.runtimes.convert import convert
    from edgetqs.sensitivity.scores import ProbeSettings
    from edgetqs.sensitivity.sweep import run_sweep

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=80)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("-k", type=int, default=8)
    ap.add_argument("--horizon", type=int, default=20)
    a = ap.parse_args()
    with np.load(ROOT / "edgetqs/examples/station/contexts.npz") as z:
        rec = z["record"][:, :5].astype(np.float32)  # temp_air, temp_dew, relative_humidity, pressure, wind_speed
    rec = (rec - rec.mean(0)) / rec.std(0)
    n = len(rec)
    train, test = rec[: int(0.6 * n)], rec[int(0.8 * n) :]
    windows = np.lib.stride_tricks.sliding_window_view(test, 48, axis=0).transpose(0, 2, 1)[::24].copy()  # one per day
    work = Path(tempfile.mkdtemp(prefix="recurrent-scales-"))
    np.save(work / "windows.npy", windows)
    pi = find_target("raspberrypi")
    print(f"windows: {list(windows.shape)} (one a day over the last 20 % of the year), K={a.k}, T={a.horizon}")
    print("| model | recurrent weights | scales | weight bytes | error at lead 1 | error at lead T | worst |")
    print("|---|---|---|---|---|---|---|")
    for kind, build in (("GRU", realmodels.gru_onestep), ("LSTM", realmodels.lstm_onestep)):
        t0 = time.perf_counter()
        path = build(work / f"{kind.lower()}.onnx", hidden=a.hidden, train_on=train, epochs=a.epochs)
        inp = resolve(path, None, contexts=work / "windows.npy", k=a.k)
        rnn = [w.name for w in inp.model.weights if inp.model.op_type(w.name) == kind]
        scores = run_sweep(inp.model, inp.spec, inp.contexts, ProbeSettings(horizon=a.horizon))
        for gran in ("channel", "tensor"):
            pins = [f"{w}=int8-{gran}" for w in rnn] + [f"{w.name}=fp32" for w in inp.model.weights if w.name not in rnn]
            plan = make_plan(scores, inp.model, pi, PlanOptions(runtime="ort", ratio=1.0, pins=tuple(parse_pin(p) for p in pins)))
            r = convert(inp.model, plan, "ort", work / f"{kind}-{gran}", inp.contexts, inp.spec, horizon=a.horizon)
            lead = [x if x is not None else float("inf") for x in r.error_by_lead]
            what = ", ".join(sorted({t.precision.name for t in plan.tensors if t.name in rnn}))
            print(
                f"| {kind} ({inp.model.n_params:,} params) | {', '.join(str(list(inp.model.weight_array(w).shape)) for w in rnn)} "
                f"| {what} | {r.weight_bytes:,} | {lead[0]:.4f} | {lead[-1]:.4f} | {max(lead):.4f} |"
            )
        print(f"<!-- {kind}: {time.perf_counter() - t0:.1f} s -->")
    return 0


if __name__ == "__main__":
    sys.exit(main())
