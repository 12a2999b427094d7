"""One definition of every metric, used by score, plan, convert, check and the benchmarks.

**Normalisation.** Every error is in units of each variable's *spread*: the standard deviation of that
variable over the data the contexts were drawn from (the whole record; premade or spun-up contexts: the
contexts themselves), computed once (`channel_spread`) and carried with the contexts and in
``reference.npz``. Variables in different units (pressure in hPa, wind in m/s) then weigh alike, and a
figure means the same thing in scores.json, plan.json, convert.json and check.json.

- divergence e_t(c): RMS over every fed-back value of context c at step t of the normalised difference
  (TQS's separation; `divergence`).
- normalised RMSE by lead: RMS over contexts and values (`rms_by_lead` of the divergence, or
  `row_metrics` per lead and per variable after `canonical` unrolls window steps into leads).
- ACC: anomaly correlation, anomalies from the record's per-variable mean; bias in the variable's units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .results import finite_or_none


def channel_axis(mode: str, channel_axis: int | None, ndim_with_batch: int) -> int:
    """The variables' axis in an array whose first axis is the batch (or time, for a record)."""
    if mode == "window":
        return ndim_with_batch - 1
    ax = -1 if channel_axis is None else channel_axis
    return ax if ax >= 0 else ndim_with_batch + ax


def channel_spread(data: np.ndarray, mode: str, axis: int | None) -> np.ndarray:
    """Per-variable standard deviation of ``data`` (first axis: time or contexts), zero-spread variables
    set to 1 so that nothing is ever divided by zero."""
    x = np.asarray(data, dtype=np.float64)
    ax = channel_axis(mode, axis, x.ndim)
    moved = np.moveaxis(x, ax, 0).reshape(x.shape[ax], -1)
    with np.errstate(all="ignore"):
        s = np.nanstd(moved, axis=1) if moved.size else np.ones(x.shape[ax])
    return np.where(np.isfinite(s) & (s > 0), s, 1.0)


def channel_mean(data: np.ndarray, mode: str, axis: int | None) -> np.ndarray:
    x = np.asarray(data, dtype=np.float64)
    ax = channel_axis(mode, axis, x.ndim)
    return np.nanmean(np.moveaxis(x, ax, 0).reshape(x.shape[ax], -1), axis=1)


def inverse_spread(spread: np.ndarray, mode: str, axis: int | None, traj_ndim: int) -> np.ndarray:
    """1 / spread shaped to broadcast against a trajectory [T, K, ...] of ``traj_ndim`` dimensions."""
    ax = channel_axis(mode, axis, traj_ndim - 1) + 1  # +1: the leading T axis
    shape = [1] * traj_ndim
    shape[ax] = -1
    return (1.0 / np.asarray(spread, dtype=np.float64)).reshape(shape)


def divergence(steps: Sequence[np.ndarray], reference: Sequence[np.ndarray], inv_spread: Sequence[np.ndarray]) -> np.ndarray:
    """e_t(c) as [T, K]: RMS over every fed-back value of the difference, each variable over its spread."""
    total: np.ndarray | None = None
    count = 0
    with np.errstate(all="ignore"):
        for s, r, inv in zip(steps, reference, inv_spread):
            d = (s.astype(np.float64) - r) * inv
            sq = np.square(d).reshape(d.shape[0], d.shape[1], -1).sum(axis=2)
            total = sq if total is None else total + sq
            count += int(np.prod(d.shape[2:]))
    assert total is not None, "divergence of zero trajectories"
    return np.sqrt(total / max(count, 1))


def rms_by_lead(e: np.ndarray) -> np.ndarray:
    """RMS over contexts of the divergence e [T, K], per lead step."""
    with np.errstate(all="ignore"):
        return np.sqrt(np.mean(np.square(e), axis=1))


def canonical(traj: np.ndarray, mode: str, axis: int | None) -> np.ndarray:
    """[T, K, ...] -> [lead, K, variable, points]: window steps unroll into leads of one row each."""
    if mode == "window":  # [T, K, H, C]
        t, k, h, c = traj.shape
        return traj.transpose(0, 2, 1, 3).reshape(t * h, k, c, 1)
    ax = channel_axis(mode, axis, traj.ndim - 1) + 1  # +1: the T axis
    moved = np.moveaxis(traj, ax, 2)
    return moved.reshape(moved.shape[0], moved.shape[1], moved.shape[2], -1)


@dataclass(frozen=True)
class RowMetrics:
    """One comparison (a vs b) per lead and variable."""

    nrmse_by_lead: tuple[float | None, ...]  # over all variables (RMS of the per-variable nRMSE)
    nrmse: tuple[tuple[float | None, ...], ...]  # [lead][variable]
    acc: tuple[tuple[float | None, ...], ...] | None
    bias: tuple[tuple[float | None, ...], ...]  # in the variable's units
    divergence_lead: int | None  # first lead (1-based) where nrmse_by_lead > tolerance
    first_nonfinite_lead: int | None
    valid_leads: int  # leads with data (truth may end before the horizon)


def row_metrics(a: np.ndarray, b: np.ndarray, spread: np.ndarray, tolerance: float, clim: np.ndarray | None) -> RowMetrics:
    """a, b: [lead, K, variable, points] (`canonical`); spread: [variable] (`channel_spread`)."""
    with np.errstate(all="ignore"):
        d = a.astype(np.float64) - b
        valid = np.isfinite(b)
        d_valid = np.where(valid, d, 0.0)
        n = valid.sum(axis=(1, 3))
        mse = np.where(n > 0, (d_valid**2).sum(axis=(1, 3)) / np.maximum(n, 1), np.nan)
        # a non-finite prediction where truth exists is an infinite error, not a missing one
        bad_pred = (~np.isfinite(a) & valid).any(axis=(1, 3))
        mse = np.where(bad_pred, np.inf, mse)
        nrmse = np.sqrt(mse) / spread[None, :]
        bias = np.where(n > 0, d_valid.sum(axis=(1, 3)) / np.maximum(n, 1), np.nan)
        bias = np.where(bad_pred, np.nan, bias)
        overall = np.sqrt(np.nanmean(nrmse**2, axis=1)) if nrmse.size else np.array([])
        acc = None
        if clim is not None:
            aa = np.where(valid, a - clim[None, None, :, None], 0.0)
            bb = np.where(valid, b - clim[None, None, :, None], 0.0)
            num = (aa * bb).sum(axis=(1, 3))
            den = np.sqrt((aa**2).sum(axis=(1, 3)) * (bb**2).sum(axis=(1, 3)))
            acc = np.where((den > 0) & ~bad_pred, num / np.where(den > 0, den, 1), np.nan)
    has = n.sum(axis=1) > 0
    nonfinite = ~np.isfinite(a).all(axis=(1, 2, 3))
    first_bad = int(np.argmax(nonfinite)) + 1 if nonfinite.any() else None
    over = ((overall > tolerance) | ~np.isfinite(overall)) & has
    div = int(np.argmax(over)) + 1 if over.any() else None

    def grid(x: Any) -> tuple[tuple[float | None, ...], ...]:
        return tuple(finite_or_none(list(r)) for r in x)

    return RowMetrics(
        finite_or_none(list(overall)), grid(nrmse), None if acc is None else grid(acc), grid(bias), div, first_bad, int(has.sum())
    )


def nrmse_by_lead(
    a: Sequence[np.ndarray], b: Sequence[np.ndarray], spreads: Sequence[np.ndarray], mode: str, axis: int | None
) -> np.ndarray:
    """Normalised RMSE of trajectories ``a`` against ``b`` (per pair [T, K, ...]) per lead, over all
    variables: the figure check.json calls ``nrmse_by_lead``."""
    qa = np.concatenate([canonical(x, mode, axis) for x in a], axis=2)
    qb = np.concatenate([canonical(x, mode, axis) for x in b], axis=2)
    spread = np.concatenate([np.asarray(s, dtype=np.float64) for s in spreads])
    with np.errstate(all="ignore"):
        per_var = np.sqrt(np.mean((qa.astype(np.float64) - qb) ** 2, axis=(1, 3))) / spread[None, :]
        return np.sqrt(np.mean(per_var**2, axis=1))
