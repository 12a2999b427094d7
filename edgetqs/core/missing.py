"""Missing values (NaN, +-Inf) in contexts: refused with where they are, or filled when the user asks.

A rollout that starts from NaN is NaN from its first step, and a score, plan or verdict computed from it
is silently wrong, so every reader (``.npy``, ``.npz``, CSV, NetCDF) hands its arrays to `finite_record`.
Without a fill method a non-finite value is an error that gives the count and the first location; with
one (``--fill`` on the commands that read contexts, ``fill = ...`` in edgetqs.toml) the values are
filled and a note says how many:

- ``ffill``: each missing value takes the last finite value of the same point before it in time (a
  leading gap takes the first value after it);
- ``interpolate``: linear in time between the finite values of the same point (ends held at the nearest);
- ``mean``: the variable's mean over every finite value of the record (the only choice for a point that
  is missing at every step, such as a land mask in a sea field, and for premade contexts, which have no
  time axis).

A point that a method cannot fill (missing at every step for ``ffill``/``interpolate``, a variable with no
finite value for ``mean``) is an error too: nothing non-finite ever leaves this module.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from ..errors import ContextsError

Fill = Literal["ffill", "interpolate", "mean"]
FILLS: tuple[str, ...] = get_args(Fill)


def check_fill(fill: str | None) -> Fill | None:
    """The fill method, or None.

    Raises:
        ContextsError: not one of `FILLS`.
    """
    if fill is None:
        return None
    if fill not in FILLS:
        raise ContextsError(f"fill method {fill!r}; expected one of {', '.join(FILLS)}")
    return fill  # type: ignore[return-value]


def _count(bad: np.ndarray, a: np.ndarray) -> str:
    nan = int(np.isnan(a[bad]).sum())
    inf = int(bad.sum()) - nan
    return " and ".join(p for p in (f"{nan:,} NaN" if nan else "", f"{inf:,} Inf" if inf else "") if p)


def _where(index: tuple[int, ...], first_axis: str, variables: tuple[str, ...], var_axis: int | None) -> str:
    text = f"{first_axis} {index[0]}"
    if var_axis is not None and 0 < var_axis < len(index) and len(variables) > index[var_axis]:
        text += f", variable '{variables[index[var_axis]]}'"
    return f"{text} (index {list(index)})"


def describe_nonfinite(
    a: np.ndarray, what: str, *, first_axis: str = "time step", variables: tuple[str, ...] = (), var_axis: int | None = None
) -> str | None:
    """``"3 NaN and 1 Inf ..., the first at time step 5, variable 'v2' (index [5, 2])"``, or None when all finite.

    Args:
        a: the array (first axis: time, or contexts).
        what: names the array in the message, e.g. ``"contexts 'x.csv'"``.
        first_axis: what the first axis counts (``time step``, ``context``, ``element``).
        variables: names along ``var_axis`` (to name the variable of the first bad value).
    """
    if a.dtype.kind not in "fc":
        return None
    bad = ~np.isfinite(a)
    if not bad.any():
        return None
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    return f"{what} holds {_count(bad, a)} value(s), the first at {_where(first, first_axis, variables, var_axis)}"


def fill_nonfinite(
    a: np.ndarray,
    method: Fill,
    what: str,
    *,
    var_axis: int,
    variables: tuple[str, ...] = (),
    has_time: bool = True,
) -> tuple[np.ndarray, int]:
    """Fill the non-finite values of ``a`` (first axis: time) with ``method``; (filled copy, number filled).

    Raises:
        ContextsError: ``ffill``/``interpolate`` on an array without a time axis, or values the method cannot fill.
    """
    bad = ~np.isfinite(a)
    n = int(bad.sum())
    if n == 0:
        return a, 0
    if method != "mean" and not has_time:
        raise ContextsError(f"{what} are premade contexts [K, ...] with no time axis to {method} along; use --fill mean or fix the file")
    out = np.array(a, dtype=np.float64, copy=True)
    if method == "mean":
        moved = np.moveaxis(out, var_axis, 0)  # a view: writes land in ``out``
        for c in range(moved.shape[0]):
            ch = moved[c]
            ok = np.isfinite(ch)
            if not ok.any():
                name = f"'{variables[c]}'" if c < len(variables) else f"{c}"
                raise ContextsError(f"{what}: variable {name} has no finite value at all, so --fill mean cannot fill it; fix the file")
            ch[~ok] = ch[ok].mean()
    else:
        flat = out.reshape(out.shape[0], -1)  # [time, every point]
        ok = np.isfinite(flat)
        empty = ~ok.any(axis=0)
        if empty.any():
            first_col = int(np.flatnonzero(empty)[0])
            point = tuple(int(i) for i in np.unravel_index(first_col, out.shape[1:]))
            raise ContextsError(
                f"{what}: {int(empty.sum()):,} point(s) are missing at every time step (the first at index {list(point)}), "
                f"so --fill {method} has nothing to fill them from; use --fill mean (the variable's mean) or fix the file"
            )
        steps = np.arange(flat.shape[0])
        for col in np.flatnonzero((~ok).any(axis=0)):
            good = ok[:, col]
            if method == "interpolate":
                flat[~good, col] = np.interp(steps[~good], steps[good], flat[good, col])
            else:  # ffill: the last finite value before; a leading gap takes the first one after
                last = np.maximum.accumulate(np.where(good, steps, -1))
                last[last < 0] = int(np.flatnonzero(good)[0])
                flat[:, col] = flat[last, col]
        out = flat.reshape(out.shape)
    return out.astype(a.dtype), n
