"""Comparing plans on held-out contexts so that signal is told from noise.

A cell's error is the RMS over contexts of each context's normalised error (`edgetqs.core.metrics`). The
uncertainty of a comparison comes from which contexts happened to be drawn: a paired bootstrap over contexts
(the same resampled contexts for both plans) gives a 95% interval of each plan's error and of the difference
between two plans. A cell is then

- ``saturated`` when every method's error exceeds 1 (the forecast has no skill left: apart from the rest);
- a ``tie`` when the plans are identical, or the interval of the difference includes zero;
- a ``win`` or a ``loss`` when the interval excludes zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SATURATED = 1.0


def cell_error(per_context: np.ndarray) -> float:
    """RMS over contexts (inf if any context diverged)."""
    x = np.asarray(per_context, dtype=np.float64)
    return float(np.sqrt(np.mean(np.square(x)))) if np.isfinite(x).all() else float("inf")


def bootstrap_samples(n: int, draws: int = 2000, seed: int = 0) -> np.ndarray:
    """Indices [draws, n] of contexts resampled with replacement (shared by every plan of a cell: paired)."""
    return np.random.default_rng(seed).integers(0, n, size=(draws, n))


def interval(per_context: np.ndarray, samples: np.ndarray) -> tuple[float, float]:
    """95% bootstrap interval of `cell_error`."""
    x = np.asarray(per_context, dtype=np.float64)
    if not np.isfinite(x).all():
        return (float("inf"), float("inf"))
    boot = np.sqrt(np.mean(np.square(x[samples]), axis=1))
    return float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def difference(a: np.ndarray, b: np.ndarray, samples: np.ndarray) -> tuple[float, float, float]:
    """(cell_error(a) - cell_error(b), and its 95% paired-bootstrap interval)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ea, eb = cell_error(a), cell_error(b)
    if not (np.isfinite(ea) and np.isfinite(eb)):
        d = ea - eb if ea != eb else 0.0
        return (d, d, d)
    boot = np.sqrt(np.mean(np.square(a[samples]), axis=1)) - np.sqrt(np.mean(np.square(b[samples]), axis=1))
    return ea - eb, float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


@dataclass(frozen=True)
class Verdict:
    """One method against the best of the others in one cell."""

    outcome: str  # win | tie | loss | saturated
    error: float
    interval: tuple[float, float]
    best_other: str
    best_other_error: float
    diff: float
    diff_interval: tuple[float, float]
    identical_plan: bool


def judge(
    method: str,
    errors: Mapping[str, np.ndarray],
    others: Sequence[str],
    plans: Mapping[str, object] | None = None,
    samples: np.ndarray | None = None,
) -> Verdict:
    """``method`` against the best (lowest error) of ``others`` in one cell.

    Args:
        errors: method -> per-context errors (same contexts, same order, for every method).
        plans: method -> something comparable (e.g. the plan's precisions): equal plans tie by definition.
    """
    mine = np.asarray(errors[method])
    samples = bootstrap_samples(len(mine)) if samples is None else samples
    present = [o for o in others if o in errors]
    best = min(present, key=lambda o: cell_error(errors[o]))
    e, eb = cell_error(mine), cell_error(errors[best])
    d, lo, hi = difference(mine, errors[best], samples)
    same = plans is not None and method in plans and best in plans and plans[method] == plans[best]
    if all(cell_error(errors[m]) > SATURATED for m in [method, *present]):
        outcome = "saturated"
    elif same or (lo <= 0.0 <= hi) or d == 0.0:
        outcome = "tie"
    else:
        outcome = "win" if hi < 0.0 else "loss"
    return Verdict(outcome, e, interval(mine, samples), best, eb, d, (lo, hi), same)


def headline(verdicts: Sequence[Verdict]) -> tuple[int, int, float]:
    """(best or tied-best cells, informative cells, share): saturated cells are not informative."""
    informative = [v for v in verdicts if v.outcome != "saturated"]
    good = sum(v.outcome in ("win", "tie") for v in informative)
    return good, len(informative), (good / len(informative) if informative else float("nan"))
