"""The closed loop, shared by the host rollout and the on-device driver: numpy only, nothing from edgetqs.

One model call maps the fed-back inputs to outputs; `Feedback` turns an output into the next input
(``state`` mode: it replaces the input; ``window`` mode: the H predicted steps are appended and the
oldest H dropped), optionally after an output slice (the median of several quantiles) and as an
increment (next = input + output). Window models come in the shapes frameworks export: the loop keeps
the window as [B, L, C] and `Feedback` maps it to and from the model's own form (``one-step``
[B, L, C] -> [B, C], ``univariate`` [B, L] -> [B, H], ``univariate-one-step`` [B, L] -> [B]). `closed_loop` runs K contexts for T steps in chunks of the batch
the model takes, padding the last chunk, with static inputs held fixed and forcing inputs fed per step.

This file is copied beside the driver onto a device, so it must import nothing but numpy.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Run = Callable[[list[str], dict[str, np.ndarray]], Sequence[Any]]


WINDOW_FORMS = ("steps", "one-step", "univariate", "univariate-one-step")


def parse_slice(text: str) -> tuple[Any, ...]:
    """Parse a numpy-style index such as ``...,1``, ``:, :, 0:3`` or ``:,None`` (a new axis) without eval.

    Raises:
        ValueError: a part that is not ``...``, ``None``, an integer or ``start:stop[:step]``.
    """
    parts: list[Any] = []
    for raw in text.strip().strip("[]").split(","):
        s = raw.strip()
        if s == "...":
            parts.append(Ellipsis)
        elif s in ("None", "newaxis", "np.newaxis"):
            parts.append(None)
        elif re.fullmatch(r"-?\d+", s):
            parts.append(int(s))
        elif re.fullmatch(r"(-?\d+)?:(-?\d+)?(:(-?\d+)?)?", s):
            nums = [int(x) if x not in ("", None) else None for x in s.split(":")]
            parts.append(slice(*nums))
        else:
            raise ValueError(
                f"output slice '{text}' has a part '{s}' that is not '...', None, an integer or start:stop; write e.g. '...,1'"
            )
    return tuple(parts)


class Feedback:
    """How one output becomes the next input.

    Args:
        window: window mode (input [B, L, C], output [B, H, C]) rather than state mode.
        increment: the model predicts the change (window: added to the last input step).
        output_slice: numpy-style index applied to the output first, e.g. ``...,1``.
        form: window mode: the model's shapes (`WINDOW_FORMS`); the loop always holds [B, L, C] windows
            and produces [B, H, C] steps.
    """

    def __init__(self, window: bool, increment: bool, output_slice: str | None = None, form: str = "steps") -> None:
        if form not in WINDOW_FORMS:
            raise ValueError(f"window form '{form}'; expected one of {', '.join(WINDOW_FORMS)}")
        self.window = window
        self.increment = increment
        self.index = parse_slice(output_slice) if output_slice else None
        self.form = form if window else "steps"

    def to_model(self, x: np.ndarray) -> np.ndarray:
        """The model's input from the loop's window (a univariate model takes [B, L], not [B, L, 1])."""
        return np.ascontiguousarray(x[..., 0]) if self.form.startswith("univariate") else x

    def produced(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """What this step predicts, in the input's dtype (window: the H new steps, [B, H, C])."""
        y = np.asarray(y)
        if self.index is not None:
            y = y[self.index]
        if self.form == "one-step":  # [B, C]: one step
            y = y[:, None, ...]
        elif self.form == "univariate":  # [B, H]: one variable
            y = y[..., None]
        elif self.form == "univariate-one-step":  # [B]
            y = y.reshape(-1, 1, 1)
        if self.increment:
            y = (x[:, -1:, ...] + y) if self.window else (x + y)
        return y.astype(x.dtype, copy=False)

    def advance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The next input from the current one and what was produced."""
        if not self.window:
            return y
        h = y.shape[1]
        return np.concatenate([x[:, h:, ...], y], axis=1) if h < x.shape[1] else y[:, -x.shape[1] :, ...]


def closed_loop(
    run: Run,
    pairs: Sequence[tuple[str, str]],
    contexts: Sequence[np.ndarray],
    horizon: int,
    feedback: Feedback,
    *,
    statics: dict[str, np.ndarray] | None = None,
    forcings: dict[str, np.ndarray] | None = None,
    overrides: dict[str, np.ndarray] | None = None,
    batch: int | None = None,
    dtypes: dict[str, Any] | None = None,
    timer: Callable[[float], None] | None = None,
) -> tuple[list[np.ndarray], int]:
    """Roll ``contexts`` out for ``horizon`` steps.

    Args:
        run: a session's ``run(output_names, feeds)``.
        pairs: (input name, output name) of each fed-back tensor.
        contexts: per pair, the initial inputs [K, ...].
        statics: inputs held fixed, without the batch axis (broadcast to the batch).
        forcings: inputs read per step, [K, T, ...] (context, step, then the input's own shape).
        overrides: extra feeds for every call (weights fed as inputs).
        batch: contexts per call (a model's fixed batch; the last call is padded with copies of its last
            context, dropped after). None: all K at once.
        dtypes: input name -> dtype the model expects.
        timer: called with the wall milliseconds of every model call (the driver's latency).

    Returns:
        (per pair the produced values [T, K, ...], number of model calls).
    """
    dtypes = dtypes or {}
    statics = statics or {}
    forcings = forcings or {}
    k = contexts[0].shape[0]
    chunk = batch or k
    calls = 0
    outs = [o for _, o in pairs]
    pieces: list[list[np.ndarray]] = []
    for start in range(0, k, chunk):
        stop = min(start + chunk, k)
        n = stop - start
        state = [_take(c, start, stop, chunk, dtypes.get(name)) for c, (name, _) in zip(contexts, pairs)]
        feeds: dict[str, np.ndarray] = {
            s: np.ascontiguousarray(np.broadcast_to(np.asarray(v, dtype=dtypes.get(s, np.asarray(v).dtype)), (chunk,) + np.shape(v)))
            for s, v in statics.items()
        }
        if overrides:
            feeds.update(overrides)
        forced = {f: _take(v, start, stop, chunk, dtypes.get(f)) for f, v in forcings.items()}
        traj: list[list[np.ndarray]] = [[] for _ in pairs]
        for t in range(horizon):
            for (name, _), x in zip(pairs, state):
                feeds[name] = feedback.to_model(x)
            for f, v in forced.items():
                feeds[f] = np.ascontiguousarray(v[:, t])
            s0 = time.perf_counter()
            ys = run(outs, feeds)
            if timer is not None:
                timer((time.perf_counter() - s0) * 1e3)
            calls += 1
            new = []
            for j, (x, y) in enumerate(zip(state, ys)):
                p = feedback.produced(x, y)
                traj[j].append(p[:n])
                new.append(feedback.advance(x, p))
            state = new
        pieces.append([np.stack(t) for t in traj])
    return [np.concatenate([p[j] for p in pieces], axis=1) for j in range(len(pairs))], calls


def _take(a: np.ndarray, start: int, stop: int, chunk: int, dtype: Any) -> np.ndarray:
    """Rows start..stop of ``a``, padded to ``chunk`` rows with copies of the last (a fixed batch)."""
    part = a[start:stop]
    if stop - start < chunk:
        part = np.concatenate([part, np.repeat(part[-1:], chunk - (stop - start), axis=0)])
    return np.ascontiguousarray(part, dtype=dtype or part.dtype)


def first_nonfinite(steps: Sequence[np.ndarray]) -> int | None:
    """1-based step where a non-finite value first appears in any trajectory [T, K, ...], or None."""
    bad = None
    for s in steps:
        finite = np.isfinite(s.reshape(s.shape[0], -1)).all(axis=1)
        if not finite.all():
            t = int(np.argmin(finite)) + 1
            bad = t if bad is None else min(bad, t)
    return bad
