"""Skill of the station example with and without its time-of-day forcing, on the held-out split.

    python scripts/forcing_skill.py [--forced edgetqs/examples/station-tod] [--plain edgetqs/examples/station] [-k 32]

The forced model is the bundled station-tod example by default, or any folder written by
``python scripts/train_examples.py --only station-tod[-doy] --out DIR`` (same record, splits, recipe and seed as the
shipped station, plus the forcing input ``tod``: the hour of day, and with -doy the day of year, of the 6
predicted hours). With the default K = 32 the figures are those of station-tod's card. Both models are rolled out by edgetqs itself (`edgetqs.core.rollout.float_reference`, which
feeds the forcing from the record's timestamps) from the same K contexts of the held-out split (0.8-1 of the
year) whose 48 h of truth lie inside it, and scored as the model cards score them: normalised RMSE (each
variable divided by its standard deviation over the whole record) at 1, 6, 24 and 48 h after the last
observed hour, with persistence beside them. Prints a markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from edgetqs.core.inputs import resolve
from edgetqs.core.project import load_project
from edgetqs.core.rollout import float_reference
from edgetqs.validation.reference import contexts_with_truth

ROOT = Path(__file__).resolve().parents[1]
LEADS = (1, 6, 24, 48)
HORIZON = 8  # calls of 6 h: 48 h
HELDOUT = "0.8:1"


def nrmse(pred: np.ndarray, truth: np.ndarray, spread: np.ndarray) -> float:
    """RMS error over contexts and variables, each variable divided by its spread (pred, truth [K, C])."""
    return float(np.sqrt(np.mean(((pred.astype(np.float64) - truth) / spread) ** 2)))


def skill(folder: Path, k: int) -> tuple[dict[int, float], dict[int, float], tuple[int, ...]]:
    """Per lead (hours): the model's and persistence's nRMSE, and the contexts' start rows."""
    proj = load_project(folder / "edgetqs.toml")
    inp = resolve(None, proj, k=k, span=HELDOUT)
    ctx = contexts_with_truth(inp, HORIZON, (0.8, 1.0))
    steps = float_reference(inp.model, inp.spec, ctx, HORIZON).steps[0]  # [T, K, H, C]
    t, kk, h, c = steps.shape
    pred = steps.transpose(1, 0, 2, 3).reshape(kk, t * h, c)
    assert ctx.record is not None
    record = ctx.record.arrays[inp.spec.pairs[0][0]]
    spread = record.astype(np.float64).std(axis=0)
    length = ctx.arrays[0].shape[1]
    last = np.asarray(ctx.indices) + length - 1
    model = {lead: nrmse(pred[:, lead - 1], record[last + lead], spread) for lead in LEADS}
    persistence = {lead: nrmse(record[last], record[last + lead], spread) for lead in LEADS}
    return model, persistence, tuple(ctx.indices)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--plain", type=Path, default=ROOT / "edgetqs" / "examples" / "station")
    ap.add_argument("--forced", type=Path, default=ROOT / "edgetqs" / "examples" / "station-tod")
    ap.add_argument("-k", type=int, default=32)
    a = ap.parse_args()
    plain, pers, starts = skill(a.plain, a.k)
    forced, pers2, starts2 = skill(a.forced, a.k)
    if starts != starts2 or pers != pers2:
        raise SystemExit("the two models were not scored on the same contexts and record")
    print(f"{len(starts)} held-out contexts (rows {starts[0]}..{starts[-1]}), normalised RMSE (lower is better)\n")
    print("| lead | persistence | station (no forcing) | station-tod (time-of-day forcing) | change |")
    print("|---|---|---|---|---|")
    for lead in LEADS:
        change = (forced[lead] - plain[lead]) / plain[lead]
        print(f"| {lead} h | {pers[lead]:.3f} | {plain[lead]:.3f} | {forced[lead]:.3f} | {change:+.1%} |")


if __name__ == "__main__":
    main()
