"""The multiple-choice knapsack: one option per item, total bytes within a budget, least summed cost.

Exact with a MILP (scipy's HiGHS), or greedy (downgrade the item with the least cost increase per byte
saved). Items are `Item`s: each option's bytes and cost (options sorted by bytes, dominated ones removed).
"""

from __future__ import annotations

import contextlib
import heapq
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import EdgetqsError


class InfeasibleBudgetError(EdgetqsError):
    """No assignment of allowed precisions fits the budget."""


@dataclass
class Item:
    """One tensor's choices: precisions (deduplicated, dominated ones removed), bytes and cost."""

    name: str
    group: str
    n: int
    options: list[Any]
    bytes: np.ndarray
    cost: np.ndarray  # gain objective: A_g^2 (n_t/n_g) r^2 ; paper: gamma_g (n_t/n_g) 2^-b
    err: np.ndarray  # always the gain-objective cost: what E is computed from
    residual: np.ndarray
    rule: str = "optimiser"


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null for the duration (C libraries write there directly)."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 (embedded interpreters): nothing to silence
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def solve_exact(items: list[Item], budget: int, current: list[int] | None = None, max_changes: int | None = None) -> list[int]:
    """Multiple-choice knapsack as a MILP (scipy / HiGHS).

    ``current`` and ``max_changes``: a trust region, at most that many items leave their current option."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix

    sizes = [len(it.options) for it in items]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    nvar = int(offsets[-1])
    c = np.concatenate([it.cost for it in items]).astype(float)
    finite = np.isfinite(c)
    big = (np.max(np.abs(c[finite])) if finite.any() else 1.0) * 1e6 + 1.0
    c = np.where(finite, c, big)
    # costs span many decades (fp16 ~1e-9, int2 ~1): scale by a near-optimal total (greedy's), so the
    # terms that decide the optimum sit well above HiGHS's tolerances
    g = solve_greedy(items, budget)
    total = abs(float(sum(min(it.cost[k], big) for it, k in zip(items, g))))
    # never a negative scale: costs may be negative (measured improvements), and dividing by a negative
    # total would turn the minimisation into a maximisation
    scale = max(total, float(np.max(np.abs(c))) * 1e-9, 1e-300) if np.any(c) else 1.0
    rows = np.repeat(np.arange(len(items)), sizes)
    choose = csr_matrix((np.ones(nvar), (rows, np.arange(nvar))), shape=(len(items), nvar))
    weights = np.concatenate([it.bytes for it in items]).astype(float)[None, :]
    constraints = [LinearConstraint(choose, 1, 1), LinearConstraint(weights, -np.inf, budget)]
    if current is not None and max_changes is not None:
        moved = np.ones(nvar)
        moved[offsets[:-1] + np.asarray(current)] = 0.0
        constraints.append(LinearConstraint(moved[None, :], -np.inf, max_changes))
    with _quiet_stdout():  # HiGHS prints solver internals to C stdout even with disp=False
        res = milp(
            c / scale,
            constraints=constraints,
            integrality=np.ones(nvar),
            bounds=Bounds(0, 1),
            options={"disp": False, "mip_rel_gap": 0.0},
        )
    if res.x is None:
        raise InfeasibleBudgetError(f"the MILP found no plan within {budget} bytes ({res.message})")
    x = res.x
    return [int(np.argmax(x[offsets[i] : offsets[i + 1]])) for i in range(len(items))]


def solve_greedy(items: list[Item], budget: int) -> list[int]:
    """Start at each tensor's largest option; repeatedly take the downgrade with the least cost
    increase per byte saved (any cheaper option of a tensor, not only the next one)."""
    choice = [len(it.options) - 1 for it in items]  # options are sorted by bytes: last is largest
    total = int(sum(it.bytes[c] for it, c in zip(items, choice)))

    def best_move(i: int) -> tuple[float, int] | None:
        it, c = items[i], choice[i]
        best = None
        for k in range(c):
            saved = it.bytes[c] - it.bytes[k]
            if saved <= 0:
                continue
            ratio = (it.cost[k] - it.cost[c]) / saved
            if best is None or ratio < best[0]:
                best = (float(ratio), k)
        return best

    heap: list[tuple[float, int, int, int]] = []
    for i in range(len(items)):
        m = best_move(i)
        if m:
            heapq.heappush(heap, (m[0], i, m[1], choice[i]))
    while total > budget and heap:
        _, i, k, was = heapq.heappop(heap)
        if choice[i] != was:
            continue  # stale entry
        total -= int(items[i].bytes[choice[i]] - items[i].bytes[k])
        choice[i] = k
        m = best_move(i)
        if m:
            heapq.heappush(heap, (m[0], i, m[1], choice[i]))
    return choice
