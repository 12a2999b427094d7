"""Which activations run in integer: TQS for activation groups, and the ladder that keeps the sensitive ones wider.

A static int8 activation (one uint8 scale per tensor, calibrated on the float model's own closed-loop rollouts)
lets onnxruntime run QLinearConv/QLinearMatMul, the fast kernels on a Cortex-A72, but rounds the tensor on every
call: a 20-step rollout of a forecaster amplifies that like any other perturbation (station: each layer's
activations alone cost 0.065-0.17 worst normalised RMSE over 120 leads, all of them 0.75; docs/notes/issue-14.md).

An **activation group** is one kernel op with an int8 weight: its input and output tensors, which static QDQ
quantizes together. It is scored the way a weight group is (`edgetqs.sensitivity.sweep`): the float model is
perturbed by the group's own quantization residual at its calibrated scale (a QuantizeLinear/DequantizeLinear
pair on each tensor), rolled out from the contexts, and the divergence from the float rollout e_t gives the
finite-time exponent gamma = mean over contexts of (1/T) ln(e_T / eps), eps the residual's rms relative to the
tensor's. ``error`` is the same rollout's worst normalised RMSE over the leads: the figure the check compares with
its tolerance, and what orders the ladder.

The ladder, per op, narrowest first: ``int8`` (static, QLinear kernels), ``dynamic`` (a MatMul/Gemm whose input
is quantized at each call's own range by DynamicQuantizeMatMul: wider, output float, still an int8 GEMM; a Conv has
no such rung), ``float`` (the weight-only op). On LiteRT a kernel whose output feeds only an elementwise
activation starts one rung narrower, ``int8-act``: the activation reads the kernel's int8 output and runs int8 too
(a lookup table), scored with the activation's output rounded at its calibrated scale as well.
`choose_activations` starts with every op at its narrowest rung and measures the artifact itself in context (the
real QDQ graph with the plan's weights, on the host); while its error exceeds the
goal (a share of the target's tolerance) it widens the smallest prefix of ops, most damaging first, that meets it,
first to their next rung, then the rest of the way to float. When the weights alone (every activation float) already
miss the goal it keeps every activation float and says so. Every trial is recorded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.results import Frozen

if TYPE_CHECKING:  # pragma: no cover
    from ..core.contexts import Contexts
    from ..core.model import Model
    from ..core.rollout import RolloutSpec

MODES = ("int8", "dynamic", "float")  # narrowest first
# every rung a route can offer (LiteRT full integer: int8 or int16 -> float; a dense layer over a flattened window on
# LiteRT: dynamic -> centred, dynamic range with the window centred on its last step, `edgetqs.runtimes.centring` -> float;
# a LiteRT int8 kernel whose output only feeds an elementwise activation: int8-act, the activation int8 too -> int8)
LABELS = ("int8-act", "int8", "int16", "dynamic", "centred", "float")
STATIC = ("int8-act", "int8", "int16")  # the rungs that quantize the kernel's input and output at calibrated scales
# ONNX elementwise activations a LiteRT int8 kernel can hand its int8 output to (XNNPACK's QS8 lookup tables, or
# LiteRT's int8 kernels), with the TFLite builtin the converter makes of each
INT8_ACTS = {"Tanh": "TANH", "Sigmoid": "LOGISTIC", "HardSwish": "HARD_SWISH", "Gelu": "GELU", "Relu": "RELU"}
INT16_MAX = 32767
GOAL_SHARE = 0.7  # aim below the tolerance: the check draws other contexts than the conversion (docs/notes/issue-14.md)


class ActivationScore(Frozen):
    """TQS of one activation group at one quantization (``int8``/``int16``: static, both tensors; ``dynamic``: the
    input, per call)."""

    op: str
    op_type: str
    mode: str
    tensors: tuple[str, ...]
    eps: float  # rms of the quantization residual over the calibration rows, relative to the tensors' rms
    gamma: float | None  # mean over contexts of (1/T) ln(e_T / eps); None when the rollout did not move
    error: float | None  # worst normalised RMSE over the horizon vs the float rollout, this group alone quantized (None: not finite)


class ActivationTrial(Frozen):
    """One artifact measured in context: the ops wider than their narrowest rung (``op=mode``) and its worst
    normalised RMSE."""

    wider: tuple[str, ...]
    error: float | None  # None: the rollout did not stay finite
    passed: bool


class ActivationChoice(Frozen):
    """What `choose_activations` chose and why (convert.json ``facts.activation_choice``)."""

    goal: float
    tolerance: float
    horizon: int
    contexts: int
    check_contexts: int = 0  # contexts the check draws, measured too (every trial's error is the worse of the two sets)
    modes: dict[str, str]  # op -> int8 | int16 | dynamic | centred | float
    scores: tuple[ActivationScore, ...]
    trials: tuple[ActivationTrial, ...]
    error: float | None  # the chosen artifact's worst normalised RMSE on these contexts (None: not finite)
    weights_alone: float | None = None  # the same with every activation float (the weight-only artifact); None: not measured
    rollouts: int
    seconds: float

    def _where(self) -> str:
        more = f" and the {self.check_contexts} the check draws" if self.check_contexts else ""
        return f"the {self.contexts} conversion contexts{more}"

    def ops(self, mode: str) -> list[str]:
        return [op for op, m in self.modes.items() if m == mode]

    def summary(self) -> str:
        counts = ", ".join(f"{len(self.ops(m))} {m}" for m in LABELS if self.ops(m))
        if self.weights_alone is not None and self.weights_alone > self.goal:
            return (
                f"activations: every one stays float: the plan's weights alone reach worst normalised RMSE {self.weights_alone:.3g} "
                f"over {self.horizon} steps on {self._where()}, over the goal {self.goal:.3g} ({self.goal / self.tolerance:.0%} "
                "of the tolerance), so no activation can run integer within it; a larger budget leaves room (--ratio/--budget)"
            )
        return (
            f"activations chosen by TQS in context: {counts} (worst normalised RMSE {_fmt(self.error)} over {self.horizon} steps "
            f"on {self._where()}, goal {self.goal:.3g} = {self.goal / self.tolerance:.0%} of the tolerance; "
            f"{self.rollouts} rollouts, {self.seconds:.1f} s)"
        )


def _fmt(x: float | None) -> str:
    return "not finite" if x is None else f"{x:.3g}"


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _smallest_prefix(n: int, passes: Callable[[int], bool]) -> int | None:
    """The smallest k in 1..n with ``passes(k)`` (doubling, then bisection: about 2 log2 n trials, assuming that
    widening more ops does not make the rollout worse); None when even n does not pass."""
    if n == 0 or not passes(n):
        return None
    lo, k = 0, 1
    while k < n and not passes(k):
        lo, k = k, min(2 * k, n)
    hi = k
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _damage(score: Callable[[str, str], ActivationScore], modes: dict[str, str], op: str) -> float:
    """The rollout error of one op's activations alone at its current rung (not finite: the worst)."""
    e = score(op, modes[op]).error
    return math.inf if e is None else e


def _narrow_back(
    modes: dict[str, str],
    allowed: Callable[[str], list[str]],
    score: Callable[[str, str], ActivationScore],
    measure: Callable[[dict[str, str]], float],
    goal: float,
) -> dict[str, str]:
    """After a round that widened every op because no prefix passed, take ops back one rung at a time, least damaging
    first, while the artifact stays within the goal. Without it, an op widened only for company stays wide: station on
    LiteRT with a centred rung ended with every op float (0.0495) where l2/l3 dynamic passes (0.059)."""

    def narrower(op: str) -> str | None:
        ladder = allowed(op)
        i = ladder.index(modes[op])
        return ladder[i - 1] if i > 0 else None

    refused: set[str] = set()  # a step that missed the goal is not tried again: later steps only add error
    changed = True
    while changed:
        changed = False
        cands = [(op, m) for op in modes if op not in refused and (m := narrower(op)) is not None]
        cands.sort(key=lambda c: _damage(score, {c[0]: c[1]}, c[0]))
        for op, m in cands:
            if measure({**modes, op: m}) <= goal:
                modes = {**modes, op: m}
                changed = True
                break
            refused.add(op)
    return modes


def _passes(measure: Callable[[dict[str, str]], float], goal: float, modes: dict[str, str], steps: list[tuple[str, str]], k: int) -> bool:
    """Whether the artifact with the first ``k`` steps taken stays within the goal."""
    return measure({**modes, **dict(steps[:k])}) <= goal


def _quantized(group: dict[str, Any], mode: str) -> tuple[str, ...]:
    """The tensors a rung rounds: input and output (static), the activation's output too (``int8-act``), or the input
    alone (per call)."""
    if mode == "int8-act":
        return (*group["tensors"], group["act"])
    return tuple(group["tensors"]) if mode in STATIC else tuple(group["tensors"][:1])


def _fake_quant(proto: Any, group: dict[str, Any], mode: str, lo_hi: dict[str, tuple[float, float]]) -> bytes:
    """The float model with one group's activations quantized: a uint8 Q/DQ pair at the calibrated scale on its
    input and output (``int8``), symmetric int16 rounding at the calibrated scale on both (``int16``: TFLite's
    int16x8, written in float ops since a 16-bit QuantizeLinear needs opset 21), or a per-call
    DynamicQuantizeLinear/DequantizeLinear on its input (``dynamic``). ``int8-act``: ``int8``, and the group's
    activation output (``act``) at its calibrated scale too."""
    import onnx
    from onnx import helper, numpy_helper

    from ..runtimes.ort_static import _q_params, _toposort

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    for t in _quantized(group, mode):
        new = t + "__tqs_act"
        if mode == "int16":
            lo, hi = lo_hi.get(t, (0.0, 1.0))
            s16 = max(abs(lo), abs(hi), 1e-12) / INT16_MAX
            g.initializer.extend(
                [
                    numpy_helper.from_array(np.array(s16, np.float32), t + "__tqs_s"),
                    numpy_helper.from_array(np.array(-INT16_MAX - 1, np.float32), t + "__tqs_lo"),
                    numpy_helper.from_array(np.array(INT16_MAX, np.float32), t + "__tqs_hi"),
                ]
            )
            nodes = [
                helper.make_node("Div", [t, t + "__tqs_s"], [t + "__tqs_d"]),
                helper.make_node("Round", [t + "__tqs_d"], [t + "__tqs_r"]),
                helper.make_node("Clip", [t + "__tqs_r", t + "__tqs_lo", t + "__tqs_hi"], [t + "__tqs_c"]),
                helper.make_node("Mul", [t + "__tqs_c", t + "__tqs_s"], [new]),
            ]
        elif mode in ("int8", "int8-act"):
            s, z = _q_params(*lo_hi.get(t, (0.0, 1.0)))
            g.initializer.extend(
                [numpy_helper.from_array(np.array(s, np.float32), t + "__tqs_s"), numpy_helper.from_array(np.array(z), t + "__tqs_z")]
            )
            nodes = [
                helper.make_node("QuantizeLinear", [t, t + "__tqs_s", t + "__tqs_z"], [t + "__tqs_q"]),
                helper.make_node("DequantizeLinear", [t + "__tqs_q", t + "__tqs_s", t + "__tqs_z"], [new]),
            ]
        else:
            nodes = [
                helper.make_node("DynamicQuantizeLinear", [t], [t + "__tqs_q", t + "__tqs_s", t + "__tqs_z"]),
                helper.make_node("DequantizeLinear", [t + "__tqs_q", t + "__tqs_s", t + "__tqs_z"], [new]),
            ]
        # as in the artifact: the op reads its quantized input (other readers of that tensor keep the float one) and
        # every reader of its output reads the quantized output (a graph output keeps the float)
        for n in g.node:
            if t == group["tensors"][0] and n.output[0] != group["tensors"][1]:
                continue
            for j, i in enumerate(n.input):
                if i == t:
                    n.input[j] = new
        g.node.extend(nodes)
    _toposort(g)
    return m.SerializeToString()


def _residuals(
    proto: Any, names: list[str], rows: list[dict[str, np.ndarray]]
) -> tuple[dict[str, tuple[float, float]], dict[str, float], dict[str, float]]:
    """Per tensor over the rows: its (min, max), and the rms of its static uint8 and its symmetric int16
    quantization residuals relative to its rms."""
    from ..runtimes.ort_static import _q_params, intermediate_values

    vals: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for outs in intermediate_values(proto, names, rows):
        for n, v in zip(names, outs):
            vals[n].append(np.asarray(v, np.float64).ravel())
    lo_hi, rel, rel16 = {}, {}, {}
    for n, vs in vals.items():
        v = np.concatenate(vs) if vs else np.zeros(1)
        lo, hi = float(v.min()), float(v.max())
        sc, z = _q_params(lo, hi)
        q = (np.clip(np.round(v / float(sc)) + int(z), 0, 255) - int(z)) * float(sc)
        s16 = max(abs(lo), abs(hi), 1e-12) / INT16_MAX
        q16 = np.clip(np.round(v / s16), -INT16_MAX - 1, INT16_MAX) * s16
        lo_hi[n] = (lo, hi)
        size = math.sqrt(float(np.mean(v**2)))
        rel[n] = math.sqrt(float(np.mean((q - v) ** 2))) / size if size > 0 else 0.0
        rel16[n] = math.sqrt(float(np.mean((q16 - v) ** 2))) / size if size > 0 else 0.0
    return lo_hi, rel, rel16


def activation_groups(weight_only: bytes) -> list[dict[str, Any]]:
    """The kernel ops of a weight-only QDQ model that can run integer activations, with their tensors."""
    import onnx

    from ..runtimes.ort_static import integer_ops

    keys = dict(integer_ops(weight_only))
    out = []
    for n in onnx.load_from_string(weight_only).graph.node:
        key = str(n.name or n.output[0])
        if key in keys:
            out.append({"op": key, "node": n.name, "op_type": n.op_type, "tensors": (n.input[0], n.output[0])})
    return out


def kernel_groups(float_proto: Any, weights: set[str]) -> list[dict[str, Any]]:
    """The Conv/Gemm/MatMul ops of a float graph whose weight input is one of ``weights`` (the plan's int8 weights),
    with their tensors: activation groups for a route that quantizes activations per op (TFLite dynamic range).
    A kernel whose output feeds only an elementwise activation (`INT8_ACTS`), itself not a graph output, carries it:
    ``act`` (its output tensor) and ``act_type``."""
    readers: dict[str, list[Any]] = {}
    for n in float_proto.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in float_proto.graph.output}
    out = []
    for n in float_proto.graph.node:
        if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in weights:
            key = str(n.name or n.output[0])
            gr = {"op": key, "node": n.name, "op_type": n.op_type, "tensors": (n.input[0], n.output[0]), "weight": n.input[1]}
            after = readers.get(n.output[0], [])
            if len(after) == 1 and after[0].op_type in INT8_ACTS and n.output[0] not in outputs and after[0].output[0] not in outputs:
                gr["act"], gr["act_type"] = after[0].output[0], after[0].op_type
            out.append(gr)
    return out


def choose_activations(
    model: Model,
    spec: RolloutSpec,
    contexts: Contexts,
    weight_only: bytes,
    float_proto: Any,
    rows: list[dict[str, np.ndarray]],
    horizon: int,
    tolerance: float,
    goal: float | None = None,
    build: Callable[[dict[str, str]], bytes] | None = None,
    *,
    groups: list[dict[str, Any]] | None = None,
    session: Callable[[bytes], Any] | None = None,
    rungs: tuple[str, ...] = MODES,
    dynamic_ops: tuple[str, ...] = ("MatMul", "Gemm"),
    also: Contexts | None = None,
) -> ActivationChoice:
    """Score every activation group and choose each op's rung so that the artifact's rollout stays within ``goal``
    (default `GOAL_SHARE` x ``tolerance``; ``math.inf``: every op at the narrowest rung).

    Args:
        model, spec, contexts: the rollout (`edgetqs.core.inputs.resolve`); the artifact is measured on these contexts.
        weight_only: the plan's weight-only QDQ graph (`edgetqs.runtimes.ort.qdq_model`; ORT's groups and artifacts
            are made from it).
        float_proto: the float graph it was made from (same tensor names): what the scores perturb.
        rows: the float model's closed-loop inputs (calibration).
        horizon, tolerance: the check's steps and tolerance (the target's ``[validation]``).
        build: op -> mode to the artifact's bytes (default: `edgetqs.runtimes.ort_static.static_qdq`, exact form).
        groups: the activation groups (default: `activation_groups` of ``weight_only``); a group with ``rungs`` takes
            that ladder instead of ``rungs`` (LiteRT: a dense layer over a flattened window, dynamic -> centred -> float).
        session: artifact bytes -> a host session (default: onnxruntime unoptimised, the exact integer arithmetic).
        rungs: the modes each op can take, narrowest first (TFLite dynamic range: ``("dynamic", "float")``).
        dynamic_ops: op types that have a ``dynamic`` rung.
        also: more contexts every trial must meet the goal on too (the converters pass the ones the check of
            ``horizon`` steps draws from the record, `edgetqs.validation.reference.check_contexts`: a choice made on
            the conversion's contexts alone passed there and failed the check: station on LiteRT at 0.4, 0.068 vs 0.100).

    Returns:
        The `ActivationChoice`; its ``modes`` name every group.
    """
    from ..core.metrics import divergence, nrmse_by_lead
    from ..core.rollout import Rollout, float_reference
    from ..ondevice.runners import OrtRunner
    from ..runtimes.ort_static import static_qdq
    from ..sensitivity.sweep import TINY, inverse_spreads

    t0 = time.perf_counter()
    goal = GOAL_SHARE * tolerance if goal is None else goal
    groups = activation_groups(weight_only) if groups is None else groups
    by_op = {gr["op"]: gr for gr in groups}
    ref = float_reference(model, spec, contexts, horizon)
    inv = inverse_spreads(spec, contexts, ref.steps)
    rollouts = 0

    def rollout(data: bytes, make: Callable[[bytes], Any] | None = None, ctx: Contexts = contexts) -> Any:
        # default: unoptimised onnxruntime, the integer arithmetic exactly, not this host's kernels (`static_qdq`'s ``exact``)
        nonlocal rollouts
        rollouts += 1
        sess = (make or (lambda d: OrtRunner(d, threads=0, optimize=False)))(data)
        return Rollout(model, spec, ctx.statics, session=sess, forcings=ctx.forcing_arrays).run(ctx.arrays, horizon)

    def worst(res: Any, ctx: Contexts = contexts, reference: Any = ref) -> float:
        lead = np.asarray(nrmse_by_lead(res.steps, reference.steps, ctx.spreads, spec.mode, spec.channel_axis), np.float64)
        return float(np.nanmax(lead)) if np.isfinite(lead).all() else math.inf

    ref_also = float_reference(model, spec, also, horizon) if also is not None else None

    def worst_also(data: bytes) -> float:
        """The artifact on the other contexts (0 when there are none)."""
        return 0.0 if also is None else worst(rollout(data, session, also), also, ref_also)

    if build is None:

        def build(modes: dict[str, str]) -> bytes:
            wide = {op for op, m in modes.items() if m == "float"}
            if len(wide) == len(modes):
                return weight_only
            dyn = {op for op, m in modes.items() if m == "dynamic"}
            return static_qdq(weight_only, float_proto, rows, keep_float=wide, dynamic=dyn, exact=True)[0]

    names = sorted({t for gr in groups for t in (*gr["tensors"], *([gr["act"]] if "act" in gr else []))})
    lo_hi, rel8, rel16 = _residuals(float_proto, names, rows) if groups else ({}, {}, {})
    scores: dict[tuple[str, str], ActivationScore] = {}

    def score(op: str, mode: str) -> ActivationScore:
        if (op, mode) not in scores:
            gr = by_op[op]
            # a centred window is scored as plain dynamic range: an upper bound, which only orders the ladder
            res = rollout(_fake_quant(float_proto, gr, "dynamic" if mode == "centred" else mode, lo_hi))
            e = divergence(res.steps, ref.steps, inv)  # [T, K]
            tensors = _quantized(gr, mode)
            # dynamic: the per-call range is at most the calibrated one, so the static residual bounds eps
            rel = rel16 if mode == "int16" else rel8
            eps = float(np.sqrt(np.mean([rel[t] ** 2 for t in tensors])))
            ok = np.isfinite(e[-1]).all() and (e[-1] > 0).any() and eps > 0
            gamma = float(np.mean(np.log(np.maximum(e[-1], TINY) / eps)) / e.shape[0]) if ok else None
            scores[(op, mode)] = ActivationScore(
                op=op, op_type=gr["op_type"], mode=mode, tensors=tuple(tensors), eps=eps, gamma=gamma, error=_finite(worst(res))
            )
        return scores[(op, mode)]

    def allowed(op: str) -> list[str]:
        gr = by_op[op]
        if "rungs" in gr:  # the route offers this op its own ladder (a centred window on LiteRT)
            return list(gr["rungs"])
        return [m for m in rungs if m != "dynamic" or gr["op_type"] in dynamic_ops]

    def wider(mode: str, op: str) -> str:
        ladder = allowed(op)
        return ladder[min(ladder.index(mode) + 1, len(ladder) - 1)]

    trials: list[ActivationTrial] = []
    measured: dict[tuple[tuple[str, str], ...], float] = {}

    def measure(modes: dict[str, str]) -> float:
        key = tuple(sorted(modes.items()))
        if key not in measured:
            data = build(modes)
            measured[key] = max(worst(rollout(data, session)), worst_also(data))
            trials.append(
                ActivationTrial(
                    wider=tuple(f"{op}={m}" for op, m in modes.items() if m != allowed(op)[0]),
                    error=_finite(measured[key]),
                    passed=measured[key] <= goal,
                )
            )
        return measured[key]

    modes = {gr["op"]: allowed(gr["op"])[0] for gr in groups}
    floor = measure({op: "float" for op in modes}) if groups and math.isfinite(goal) else None
    if floor is not None and floor > goal:  # the weights alone miss the goal: no activation can run integer within it
        modes = {op: "float" for op in modes}
    elif groups and measure(modes) > goal and math.isfinite(goal):
        forced = False
        for _ in range(max(len(allowed(op)) for op in modes) - 1):  # each op at most one rung per round: int8 -> dynamic -> float
            order = [op for op in modes if modes[op] != "float"]
            order.sort(key=partial(_damage, score, dict(modes)), reverse=True)
            steps = [(op, wider(modes[op], op)) for op in order]
            n = _smallest_prefix(len(steps), partial(_passes, measure, goal, dict(modes), steps))
            modes = {**modes, **dict(steps[: len(steps) if n is None else n])}
            if n is not None:
                break  # else: not enough with every op one rung wider: the next round widens from there
            forced = True
        if forced:
            modes = _narrow_back(modes, allowed, score, measure, goal)
    final = measure(modes) if groups else 0.0
    if groups:  # score every group at its narrowest rung, and at the next one when it was widened
        for op, m in modes.items():
            ladder = allowed(op)
            score(op, ladder[0])
            if m != ladder[0] and len(ladder) > 2:
                score(op, ladder[1])
    return ActivationChoice(
        goal=goal,
        tolerance=tolerance,
        horizon=horizon,
        contexts=contexts.k,
        check_contexts=also.k if also is not None else 0,
        modes=modes,
        scores=tuple(scores.values()),
        trials=tuple(trials),
        error=_finite(final),
        weights_alone=None if floor is None else _finite(floor),
        rollouts=rollouts,
        seconds=time.perf_counter() - t0,
    )
