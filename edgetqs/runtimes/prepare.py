"""The graph a converter gets: the float model canonicalised and legalised for its route.

Every route starts here (`prepare`): ``ort`` and ``ort-mobile`` get the canonical graph (constant shape,
pad and index arithmetic folded, dead nodes removed: `edgetqs.runtimes.canonicalize`); ``tflite`` and
``tflm`` get it with the batch fixed to 1 and then the ops their route lacks rewritten into ops it has
(`edgetqs.runtimes.legalize`: GELU, Erf, LayerNormalization, DFT, GRU/LSTM/RNN...). What was folded and
each rewrite, with the deviation it causes measured on random inputs and on the float model's own
closed-loop inputs, is recorded in convert.json (``facts.prepared``).

Weights keep their names through both passes, except the W/R/B tensors of recurrent cells, which
legalisation splits per gate; `Prepared.pieces` maps a planned (source) tensor to the initializers that
now hold it, so converters match, quantize and read back the pieces of a planned tensor with the
tensor's precision (per gate row when the plan is per channel: the pieces' output columns are the
source's gate rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.quantize import Layout, Precision
from .base import ConvertError

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from ..core.model import Model
    from .legalize import Rewrite, WeightPiece

# route -> the legalisation table it needs (None: canonicalisation only)
LEGALIZE = {"ort": None, "ort-mobile": None, "tflite": "tflite", "tflm": "tflm"}
# routes whose converters take a batch-1 graph (onnx2tf runs at batch 1)
BATCH1 = ("tflite", "tflm")


@dataclass
class Prepared:
    """A model ready for one route.

    Attributes:
        model: a `Model` on the prepared graph (same path and name as the float model).
        source: the float model it was prepared from (the plan's tensor names and layouts).
        canon: what canonicalisation did (`CanonReport.to_dict`).
        rewrites: the legalisation rewrites applied, in graph order.
        deviations: rule -> deviation of the graph with that rule's rewrites alone (random inputs and
            the float model's closed-loop inputs), plus ``canonicalize`` and ``all``.
        pieces: source tensor name -> the initializers cut from it (recurrent W/R/B per gate).
    """

    model: Model
    source: Model
    canon: dict[str, Any]
    rewrites: list[Rewrite]
    deviations: dict[str, dict[str, Any]] = field(default_factory=dict)
    pieces: dict[str, tuple[WeightPiece, ...]] = field(default_factory=dict)

    @property
    def source_weights(self) -> set[str]:
        return {w.name for w in self.source.weights}

    def values(self, name: str) -> list[tuple[str, np.ndarray]]:
        """(initializer name, values) holding the planned tensor ``name`` in the prepared graph: its pieces
        for a split recurrent weight, itself when it is still there, nothing when canonicalisation removed it."""
        if name in self.pieces:
            return [(p.name, self.model.weight_array(p.name)) for p in self.pieces[name]]
        if any(w.name == name for w in self.model.weights):
            return [(name, self.model.weight_array(name))]
        return []

    def record(self) -> dict[str, Any]:
        """JSON-ready summary for convert.json."""
        return {
            "canonicalized": self.canon,
            "rewrites": [{**r.to_dict(), "deviation": self.deviations.get(r.rule)} for r in self.rewrites],
            "deviation_all": self.deviations.get("all"),
            "deviation_canonicalize": self.deviations.get("canonicalize"),
        }

    def notes(self) -> list[str]:
        """One line per kind of rewrite, for convert.json's notes."""
        out = []
        by_rule: dict[str, int] = {}
        for r in self.rewrites:
            by_rule[r.rule] = by_rule.get(r.rule, 0) + 1
        for rule, n in by_rule.items():
            d = self.deviations.get(rule) or {}
            rel = (d.get("contexts") or d.get("random") or {}).get("max_rel")
            out.append(f"legalised {n} node(s) with {rule}" + (f" (deviation {rel:.2g} of the output scale)" if rel is not None else ""))
        folded = self.canon.get("folded") or {}
        if folded:
            out.append("canonicalised: folded " + ", ".join(f"{k} x{v}" for k, v in sorted(folded.items())))
        return out


def piece_precision(p: Precision, source_layout: Layout, piece: WeightPiece) -> Precision:
    """The precision one gate piece of a recurrent weight gets from its source's planned precision.

    Per channel along the source's gate rows (axis 1 of ``[dirs, gates*hidden, in]``) is per channel on
    the piece's output columns: the same channels, the same scales. Per channel along another axis (the
    direction axis, of size 1) or per tensor is one scale per piece. Blocks run along the input axis of
    both and stay blocks."""
    if p.kind != "int" or p.bits == 32 or p.granularity in (None, "tensor", "block"):
        return p
    if source_layout.out_axis == 1:
        return p
    return Precision("int", p.bits, "tensor")


def prepare(
    model: Model,
    route: str,
    feeds: list[dict[str, np.ndarray]] | None = None,
    measure: bool = True,
) -> Prepared:
    """Canonicalise (and for TFLite routes, legalise) the model for ``route``.

    Args:
        model: the float `Model`.
        route: a runtime name (``ort``, ``ort-mobile``, ``tflite``, ``tflm``).
        feeds: batch-1 inputs of the float model (its closed-loop rows) to measure deviations on, beside random ones.
        measure: measure the deviation of each rewrite (False: only the rewrites).

    Returns:
        The `Prepared` model.

    Raises:
        ConvertError: a node the route lacks that no rewrite can replace (naming the op, the node and why),
            or a graph that cannot be canonicalised.
    """
    from ..core.model import Model
    from .canonicalize import CanonicalizeError, canonicalize
    from .legalize import GAPS, legalize, pieces_by_source, unsupported_ops

    table = LEGALIZE.get(route, route if route in GAPS else None)
    fixed = [i for i in model.inputs if i.shape and i.shape[0] is not None]
    batch = 1 if route in BATCH1 and not fixed else None
    try:
        canon, report = canonicalize(model.proto, batch)
    except CanonicalizeError as exc:
        raise ConvertError(f"cannot canonicalise the graph for {route}: {exc}") from None
    rewrites: list[Rewrite] = []
    out = canon
    if table is not None:
        out, rewrites = legalize(canon, table)
        missing = unsupported_ops(out, table)
        if missing:
            raise ConvertError(unsupported_message(missing, route))
    prepared_model = Model(out, model.path, min_weight_size=1, include=model.include, exclude=model.exclude)  # the same weight rules
    prepared_model.name = model.name
    pieces_src = pieces_by_source(rewrites)
    by_name = {p.name: p for r in rewrites for p in r.pieces}
    prep = Prepared(
        prepared_model, model, report.to_dict(), rewrites, pieces={s: tuple(by_name[n] for n in names) for s, names in pieces_src.items()}
    )
    if measure:
        prep.deviations = _deviations(model.proto, canon, out, rewrites, table, feeds)
    return prep


def unsupported_message(missing: list[Any], route: str) -> str:
    """The refusal for ops a route lacks with no rewrite: the op, the node, why; advice valid for any target."""
    first = missing[0]
    more = f" (and {len(missing) - 1} more node(s): {', '.join(sorted({m.op for m in missing[1:]}))})" if len(missing) > 1 else ""
    return (
        f"the {route} route cannot take {first}{more}; edgetqs has no rewrite for it: replace the op in the model before "
        "exporting (for example with an equivalent made of MatMul/Add/Mul/Tanh/Sigmoid), or plan for a target whose runtime runs it"
    )


def _feeds_for(proto: onnx.ModelProto, rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    names = {i.name for i in proto.graph.input}
    return {k: v for k, v in rows[0].items() if k in names} if rows else {}


def _dev_on(a: onnx.ModelProto, b: onnx.ModelProto, rows: list[dict[str, np.ndarray]]) -> dict[str, Any] | None:
    """Deviation of b from a on given batch-1 input rows (max abs, normwise relative)."""
    import onnxruntime as ort

    if not rows:
        return None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sa = ort.InferenceSession(a.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    sb = ort.InferenceSession(b.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sa.get_outputs()]
    ins_a = {i.name for i in sa.get_inputs()}
    ins_b = {i.name for i in sb.get_inputs()}
    worst_abs = worst_rel = peak = 0.0
    for r in rows:
        ya = sa.run(names, {k: v for k, v in r.items() if k in ins_a})
        yb = sb.run(names, {k: v for k, v in r.items() if k in ins_b})
        for u, v in zip(ya, yb):
            d = float(np.max(np.abs(u.astype(np.float64) - v.astype(np.float64)))) if u.size else 0.0
            top = float(np.max(np.abs(u))) if u.size else 0.0
            worst_abs, worst_rel, peak = max(worst_abs, d), max(worst_rel, d / max(top, 1e-12)), max(peak, top)
    return {"max_abs": worst_abs, "max_rel": worst_rel, "scale": peak, "n": len(rows)}


def _deviations(
    original: onnx.ModelProto,
    canon: onnx.ModelProto,
    legal: onnx.ModelProto,
    rewrites: list[Rewrite],
    table: str | None,
    rows: list[dict[str, np.ndarray]] | None,
) -> dict[str, dict[str, Any]]:
    """Each rule's deviation alone (the canonical graph with only that rule's op rewritten), all rules
    together, and canonicalisation's; on random N(0, 1) inputs and on the given closed-loop rows."""
    from .legalize import GAPS, Gap, legalize, measure_deviation

    rows = rows or []
    rows = rows[:: max(1, len(rows) // 16)][:16]  # spread over the contexts and the rollout
    out: dict[str, dict[str, Any]] = {}

    def both(a: onnx.ModelProto, b: onnx.ModelProto) -> dict[str, Any]:
        rnd = measure_deviation(a, b, n=1, seed=0).to_dict()
        return {"random": {k: rnd[k] for k in ("max_abs", "max_rel", "scale")}, "contexts": _dev_on(a, b, rows)}

    out["canonicalize"] = both(original, canon)
    if table is None or not rewrites:
        return out
    gaps = GAPS[table]
    for rule in dict.fromkeys(r.rule for r in rewrites):
        ops = {r.op for r in rewrites if r.rule == rule}
        only = {op: Gap(gaps[op].reason, (rule,)) for op in ops if op in gaps}
        alone, _ = legalize(canon, table, only)
        out[rule] = both(canon, alone)
    out["all"] = both(canon, legal)
    return out


def prepared_fixed_bytes(model: Model, route: str) -> int:
    """Bytes of the non-weight constants of the graph ``route`` converts after canonicalisation *and*
    legalisation (a DFT rewritten as MatMul stores its cos/sin basis): what a weight-only artifact holds beside the
    planned weights. The pieces cut from a planned weight (recurrent gates) are that weight, not constants."""
    from onnx import numpy_helper

    try:
        prep = prepare(model, route, measure=False)
    except Exception:  # noqa: BLE001 - convert names the cause; the plan prices the canonical graph meanwhile
        return canonical_fixed_bytes(model, route)
    weights = {w.name for w in model.weights} | {p.name for ps in prep.pieces.values() for p in ps}
    return sum(numpy_helper.to_array(i).nbytes for i in prep.model.proto.graph.initializer if i.name not in weights)


def canonical_fixed_bytes(model: Model, route: str) -> int:
    """Bytes of the non-weight initializers of the graph ``route`` converts (its canonical form): folding turns
    run-time shape, pad and index arithmetic into stored constants, which the artifact holds and the plan pays."""
    from onnx import numpy_helper

    from .canonicalize import CanonicalizeError, canonicalize

    fixed = [i for i in model.inputs if i.shape and i.shape[0] is not None]
    batch = 1 if route in BATCH1 and not fixed else None
    try:
        canon, _ = canonicalize(model.proto, batch)
    except CanonicalizeError:
        return model.fixed_bytes  # convert names the cause; the plan prices the graph as it is
    weights = {w.name for w in model.weights}
    return sum(numpy_helper.to_array(i).nbytes for i in canon.graph.initializer if i.name not in weights)
