"""Other ways to choose bits, behind the same plan interface, for the benchmarks.

Every method yields a `Plan` at a byte budget from the same quantizer and the same knapsack; only
what it believes a group costs differs (the per-group gain A_g in E = sqrt(sum_g (A_g r_g)^2)):

- ``tqs``: our default, A_g measured along the rollout (`edgetqs.tqs`).
- ``tqs-paper``: the published objective sum_g gamma_g * 2^-b_g.
- ``weight-error``: no model run, what data-free toolkits do: every tensor's relative quantization
  error (r / rms(W))^2 weighs alike, i.e. A_g = 1 / rms(W_g).
- ``hessian``: HAWQ-v2, Omega_g = Tr(H_g)/n_g * ||Q(W_g) - W_g||^2 = Tr(H_g) r_g^2, i.e. A_g^2 = Tr(H_g),
  with Tr(H_g) the Hutchinson estimate for the one-step prediction loss (`hutchinson_traces`).
- ``random``: A_g drawn at random (log-uniform over six decades), seeded.
- ``uniform``: one precision for every tensor, int8 if it fits the budget, else int4.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np

from .plan import InfeasibleBudgetError, Plan, PlanOptions, make_plan, parse_pin

METHODS = ("tqs", "tqs-paper", "weight-error", "hessian", "random", "uniform")


def with_gains(scores, gains: dict[str, float], label: str):
    """The same scores with each group's gain replaced, and no group dead or diverged (a baseline
    that does not run the model cannot know either)."""
    groups = tuple(replace(g, gain=float(gains[g.name]), dead=False, diverged_step=None,
                           gamma=g.gamma if g.gamma is not None else 0.0) for g in scores.groups)
    return replace(scores, groups=groups, notes=tuple(scores.notes) + (f"gains from the {label} baseline",))


def weight_error_gains(scores, model) -> dict[str, float]:
    out = {}
    for g in scores.groups:
        w = np.concatenate([model.weight_array(t).ravel() for t in g.tensors]).astype(np.float64)
        rms = float(np.sqrt(np.mean(w * w))) if w.size else 0.0
        out[g.name] = 1.0 / rms if rms > 0 else 0.0
    return out


def random_gains(scores, seed: int) -> dict[str, float]:
    rng = np.random.default_rng([seed, 11])
    return {g.name: float(10 ** rng.uniform(-3, 3)) for g in scores.groups}


def hessian_gains(traces: dict[str, float]) -> dict[str, float]:
    return {k: math.sqrt(max(v, 0.0)) for k, v in traces.items()}


def hutchinson_traces(module, loss_fn, groups: dict[str, list[str]], samples: int = 64, seed: int = 0) -> tuple[dict[str, float], float, int]:
    """Hutchinson estimate of Tr(H_g) of ``loss_fn()`` for every group at once.

    One Hessian-vector product per sample with a Rademacher vector v over all weights gives
    v_g . (Hv)_g for every group g; their mean over samples estimates each trace.

    Args:
        module: a torch module whose named parameters include every tensor in ``groups``.
        loss_fn: a closure returning the scalar loss (the one-step prediction loss).
        groups: group name -> parameter names.

    Returns: (group -> trace, seconds, Hessian-vector products).
    """
    import torch

    params = dict(module.named_parameters())
    names = [n for ns in groups.values() for n in ns if n in params]
    ps = [params[n] for n in names]
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    loss = loss_fn()
    grads = torch.autograd.grad(loss, ps, create_graph=True)
    acc = {n: 0.0 for n in names}
    for _ in range(samples):
        vs = [torch.randint(0, 2, p.shape, generator=gen, dtype=torch.float32) * 2 - 1 for p in ps]
        hv = torch.autograd.grad(grads, ps, grad_outputs=vs, retain_graph=True)
        for n, v, h in zip(names, vs, hv):
            acc[n] += float((v * h).sum())
    traces = {g: sum(acc[n] for n in ns if n in acc) / samples for g, ns in groups.items()}
    return traces, time.perf_counter() - t0, samples


def uniform_plan(scores, model, target, opts: PlanOptions) -> Plan:
    """int8 per channel for every tensor if it fits the budget, else int4 per channel."""
    last: InfeasibleBudgetError | None = None
    for p in ("int8-channel", "int4-channel"):
        try:
            return make_plan(scores, model, target, replace(opts, pins=(parse_pin(f"re:.*={p}"),)))
        except InfeasibleBudgetError as exc:
            last = exc
    assert last is not None
    raise last


def method_plan(method: str, scores, model, target, opts: PlanOptions, *, traces: dict[str, float] | None = None, seed: int = 0,
                fp32: tuple[str, ...] = ()) -> Plan:
    """The plan ``method`` makes at the budget in ``opts``.

    ``fp32``: tensors the method has no estimate for and leaves unquantized (the hessian baseline:
    buffers such as normalisation constants, which carry no gradient; HAWQ quantizes parameters only).

    Raises:
        InfeasibleBudgetError: the budget is below what the method can reach (uniform: int4 everywhere).
        ValueError: unknown method, or ``hessian`` without traces.
    """
    if method == "tqs":
        return make_plan(scores, model, target, opts)
    if method == "tqs-paper":
        return make_plan(scores, model, target, replace(opts, objective="paper"))
    if method == "weight-error":
        return make_plan(with_gains(scores, weight_error_gains(scores, model), method), model, target, opts)
    if method == "random":
        return make_plan(with_gains(scores, random_gains(scores, seed), method), model, target, opts)
    if method == "hessian":
        if traces is None:
            raise ValueError("the hessian baseline needs traces (hutchinson_traces)")
        pins = tuple(opts.pins) + tuple(parse_pin(f"{t}=fp32") for t in fp32)
        return make_plan(with_gains(scores, hessian_gains(traces), method), model, target, replace(opts, pins=pins))
    if method == "uniform":
        return uniform_plan(scores, model, target, opts)
    raise ValueError(f"unknown method '{method}'; expected one of {', '.join(METHODS)}")
