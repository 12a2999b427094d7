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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BadInputError
from ..registry import Registry
from .plan import InfeasibleBudgetError, Plan, PlanOptions, make_plan, parse_pin


def with_gains(scores: Any, gains: dict[str, float], label: str) -> Any:
    """The same scores with each group's gain replaced, and no group dead or diverged (a baseline
    that does not run the model cannot know either)."""
    groups = tuple(
        g.model_copy(
            update={"gain": float(gains[g.name]), "dead": False, "diverged_step": None, "gamma": g.gamma if g.gamma is not None else 0.0}
        )
        for g in scores.groups
    )
    return scores.model_copy(update={"groups": groups, "notes": tuple(scores.notes) + (f"gains from the {label} baseline",)})


def weight_error_gains(scores: Any, model: Any) -> dict[str, float]:
    out = {}
    for g in scores.groups:
        w = np.concatenate([model.weight_array(t).ravel() for t in g.tensors]).astype(np.float64)
        rms = float(np.sqrt(np.mean(w * w))) if w.size else 0.0
        out[g.name] = 1.0 / rms if rms > 0 else 0.0
    return out


def random_gains(scores: Any, seed: int) -> dict[str, float]:
    rng = np.random.default_rng([seed, 11])
    return {g.name: float(10 ** rng.uniform(-3, 3)) for g in scores.groups}


def hessian_gains(traces: dict[str, float]) -> dict[str, float]:
    return {k: math.sqrt(max(v, 0.0)) for k, v in traces.items()}


def hutchinson_traces(
    module: Any, loss_fn: Callable[[], Any], groups: dict[str, list[str]], samples: int = 64, seed: int = 0
) -> tuple[dict[str, float], float, int]:
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


def uniform_plan(scores: Any, model: Any, target: Any, opts: PlanOptions) -> Plan:
    """int8 per channel for every tensor if it fits the budget, else int4 per channel."""
    last: InfeasibleBudgetError | None = None
    for p in ("int8-channel", "int4-channel"):
        try:
            return make_plan(scores, model, target, opts.model_copy(update={"pins": (parse_pin(f"re:.*={p}"),)}))
        except InfeasibleBudgetError as exc:
            last = exc
    raise last or InfeasibleBudgetError("no uniform precision fits the budget")


@dataclass(frozen=True)
class MethodInputs:
    """What an allocation method may use: the sweep's scores (its groups and, for TQS, its gains), the
    model, the target, the plan options (budget, runtime, rounding), and what a baseline brings."""

    scores: Any
    model: Any
    target: Any
    opts: PlanOptions
    traces: dict[str, float] | None = None  # Hutchinson traces, for the Hessian baseline
    seed: int = 0
    fp32: tuple[str, ...] = ()  # tensors a method has no estimate for and leaves unquantized
    bits: int | None = None  # the bit-width of the uniform baselines (their budget is their own size)
    ladder: Any = None  # scores with quant-probe gains per bit-width (tqs-ladder; a start of tqs-rescored)
    spec: Any = None  # rollout and scoring contexts: what tqs-rescored measures on
    contexts: Any = None
    rescore: Any = None  # `RescoreSettings`


Method = Callable[[MethodInputs], Plan]


def _hessian(i: MethodInputs) -> Plan:
    if i.traces is None:
        raise BadInputError("the hessian baseline needs traces (hutchinson_traces)")
    pins = tuple(i.opts.pins) + tuple(parse_pin(f"{t}=fp32") for t in i.fp32)
    return make_plan(with_gains(i.scores, hessian_gains(i.traces), "hessian"), i.model, i.target, i.opts.model_copy(update={"pins": pins}))


METHODS: Registry[Method] = Registry("allocation method")
METHODS.register("tqs", lambda i: make_plan(i.scores, i.model, i.target, i.opts))
METHODS.register("tqs-paper", lambda i: make_plan(i.scores, i.model, i.target, i.opts.model_copy(update={"objective": "paper"})))
METHODS.register(
    "weight-error",
    lambda i: make_plan(with_gains(i.scores, weight_error_gains(i.scores, i.model), "weight-error"), i.model, i.target, i.opts),
)
METHODS.register("hessian", _hessian)
METHODS.register("random", lambda i: make_plan(with_gains(i.scores, random_gains(i.scores, i.seed), "random"), i.model, i.target, i.opts))
METHODS.register("uniform", lambda i: uniform_plan(i.scores, i.model, i.target, i.opts))


def uniform_bits(i: MethodInputs) -> Plan:
    """Every weight matrix (rank >= 2: the weights of Gemm, MatMul, Conv...) at ``bits`` bits per output channel, scales
    counted, and the 1-D tensors (biases, normalisers) kept in fp32, as post-training quantization papers do: the
    paper's RTN baseline, and with ``rounding="gptq"`` in the options its GPTQ baseline. Its budget is its own size,
    so a benchmark cell at this size compares every method at matched bytes."""
    if i.bits is None:
        raise BadInputError("the uniform-bits baseline needs bits=")
    pins = tuple(parse_pin(f"{w.name}={'fp32' if len(w.shape) < 2 else f'int{i.bits}-channel'}") for w in i.model.weights)
    opts = i.opts.model_copy(update={"pins": pins, "budget_bytes": 2**50, "ratio": None})
    return make_plan(i.scores, i.model, i.target, opts)


def _ladder(i: MethodInputs) -> Plan:
    if i.ladder is None:
        raise BadInputError("tqs-ladder needs scores with --ladder gains")
    return make_plan(i.ladder, i.model, i.target, i.opts)


def _rescored(i: MethodInputs) -> Plan:
    from .rescore import rescore

    if i.spec is None or i.contexts is None:
        raise BadInputError("tqs-rescored needs the rollout and the scoring contexts to measure on")
    return rescore(i.scores, i.model, i.target, i.opts, i.spec, i.contexts, ladder=i.ladder, settings=i.rescore)


METHODS.register("uniform-bits", uniform_bits)
METHODS.register("tqs-ladder", _ladder)
METHODS.register("tqs-rescored", _rescored)


def method_plan(
    method: str,
    scores: Any,
    model: Any,
    target: Any,
    opts: PlanOptions,
    *,
    traces: dict[str, float] | None = None,
    seed: int = 0,
    fp32: tuple[str, ...] = (),
    **more: Any,
) -> Plan:
    """The plan the registered ``method`` makes at the budget in ``opts`` (``more``: further `MethodInputs` fields).

    Raises:
        InfeasibleBudgetError: the budget is below what the method can reach (uniform: int4 everywhere).
        BadInputError: unknown method, or ``hessian`` without traces.
    """
    return METHODS.get(method)(MethodInputs(scores, model, target, opts, traces, seed, fp32, **more))
