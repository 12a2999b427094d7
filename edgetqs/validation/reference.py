"""``reference.npz``: everything an on-device check compares against, so a device never needs the float model.

It holds the contexts, the static inputs, the forcing inputs' values per step (``forcing__NAME`` [K, T, ...]:
a device needs no timestamps or record), the float trajectories computed on the host, the truth that
follows each context in the record (NaN past its end), and a JSON ``meta`` (`ReferenceMeta`): the
rollout, the model's inputs and outputs, its fixed batch if any, and each variable's spread and mean
over the contexts' data (the one normalisation of `edgetqs.core.metrics`, and ACC's climatology).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from ..core.contexts import Contexts, ContextsInfo
from ..core.inputs import Inputs
from ..core.model import Model
from ..core.results import Frozen, describe_validation_error
from ..core.rollout import RolloutSpec, float_reference, steps_per_call
from ..errors import BadInputError, DivergedRolloutError, EdgetqsError, Hint

REFERENCE_VERSION = 2


class IOInfo(Frozen):
    name: str
    shape: tuple[int | None, ...]  # without the batch axis
    dtype: str = "float32"


class ReferenceMeta(Frozen):
    reference_version: int
    model: str
    model_sha256: str
    horizon: int
    spec: RolloutSpec
    variables: tuple[str, ...]
    contexts: ContextsInfo
    climatology: tuple[float, ...]  # per variable (all pairs): mean over the contexts' data
    spread: tuple[float, ...]  # per variable: standard deviation over the contexts' data
    inputs: tuple[IOInfo, ...]
    outputs: tuple[IOInfo, ...]
    batch: int | None = None  # the model's fixed batch (None: any)


@dataclass(frozen=True)
class Reference:
    """Everything a device check compares against (``reference.npz``)."""

    contexts: dict[str, np.ndarray]  # pair input -> [K, ...]
    statics: dict[str, np.ndarray]
    float_traj: dict[str, np.ndarray]  # pair output -> [T, K, ...]
    truth: dict[str, np.ndarray] | None  # pair output -> [T, K, ...], NaN where the record ends
    meta: ReferenceMeta
    forcings: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # forcing input -> [K, T, ...]

    @property
    def horizon(self) -> int:
        return self.meta.horizon

    @property
    def k(self) -> int:
        return int(next(iter(self.contexts.values())).shape[0])

    def save(self, path: Path, policy: str = "replace_result") -> Path:
        from ..core.files import save_npz

        arrays: dict[str, Any] = {f"ctx__{k}": v for k, v in self.contexts.items()}
        arrays |= {f"static__{k}": v for k, v in self.statics.items()}
        arrays |= {f"float__{k}": v for k, v in self.float_traj.items()}
        if self.truth is not None:
            arrays |= {f"truth__{k}": v for k, v in self.truth.items()}
        arrays |= {f"forcing__{k}": v for k, v in self.forcings.items()}
        return save_npz(path, policy=policy, kind="reference", meta=np.array(self.meta.model_dump_json()), **arrays)

    @classmethod
    def load(cls, path: Path) -> Reference:
        """Raises BadInputError for anything that is not a reference.npz of this version."""
        from ..core.files import input_file

        input_file(path, "reference file", "give a reference.npz written by `edgetqs check` or `edgetqs build`")
        try:
            with np.load(path, allow_pickle=False) as d:
                raw = json.loads(str(d["meta"]))
                arrays = {k: d[k] for k in d.files if k != "meta"}
        except FileNotFoundError:
            raise BadInputError(f"reference file '{path}' does not exist") from None
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise BadInputError(f"'{path}' is not a reference.npz written by edgetqs ({type(exc).__name__}: {str(exc)[:200]})") from None
        except Exception as exc:  # noqa: BLE001 - zipfile raises BadZipFile and friends on a truncated file
            raise BadInputError(f"'{path}' is not a readable reference.npz ({type(exc).__name__}: {str(exc)[:200]})") from None
        if not isinstance(raw, dict) or raw.get("reference_version") != REFERENCE_VERSION:
            got = raw.get("reference_version") if isinstance(raw, dict) else None
            raise BadInputError(
                f"'{path}' has reference_version {got}; this edgetqs reads {REFERENCE_VERSION}: rebuild it with `edgetqs check`"
            )
        try:
            meta = ReferenceMeta.model_validate(raw)
        except ValidationError as exc:
            raise BadInputError(describe_validation_error(exc, f"'{path}' meta")) from None

        def pick(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

        ref = cls(pick("ctx__"), pick("static__"), pick("float__"), pick("truth__") or None, meta, pick("forcing__"))
        missing = [i for i, _ in meta.spec.pairs if i not in ref.contexts] + [o for _, o in meta.spec.pairs if o not in ref.float_traj]
        missing += [f.input for f in meta.spec.forcings if f.input not in ref.forcings]
        if missing:
            raise BadInputError(f"'{path}' lacks the arrays for {missing}; rebuild it with `edgetqs check`")
        for name, a in [*ref.contexts.items(), *ref.float_traj.items(), *ref.statics.items(), *ref.forcings.items()]:
            if a.dtype.kind not in "fiu" or not np.isfinite(a).all():
                raise BadInputError(f"'{path}': array '{name}' holds NaN, Inf or no numbers; rebuild it with `edgetqs check`")
        for name, a in (ref.truth or {}).items():
            if a.dtype.kind != "f" or np.isinf(a).any():  # NaN is where the record ended; Inf is never data
                raise BadInputError(f"'{path}': truth array '{name}' holds Inf or no numbers; rebuild it with `edgetqs check`")
        k = {a.shape[0] if a.ndim else -1 for a in ref.contexts.values()}
        for _, o in meta.spec.pairs:
            f = ref.float_traj[o]
            if f.ndim < 2 or f.shape[0] != meta.horizon or f.shape[1] not in k or (ref.truth and ref.truth.get(o, f).shape != f.shape):
                raise BadInputError(
                    f"'{path}': array '{o}' has shape {list(f.shape)}, not [horizon {meta.horizon}, K, ...] like its contexts; "
                    "rebuild it with `edgetqs check`"
                )
        for name, a in ref.forcings.items():
            if a.ndim < 2 or a.shape[0] not in k or a.shape[1] != meta.horizon:
                raise BadInputError(
                    f"'{path}': forcing array '{name}' has shape {list(a.shape)}, not [K, horizon {meta.horizon}, ...]; rebuild it with `edgetqs check`"
                )
        if len(k) != 1 or meta.horizon < 1:
            raise BadInputError(
                f"'{path}': its contexts do not agree on K, or its horizon is {meta.horizon}; rebuild it with `edgetqs check`"
            )
        return ref


def _truth(contexts: Contexts, spec: RolloutSpec, float_traj: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """What the record holds after each context, shaped like the trajectories; NaN past its end."""
    rec = contexts.record
    if rec is None or any(i < 0 for i in contexts.indices):
        return None
    out = {}
    for (name, oname), c in zip(spec.pairs, contexts.arrays):
        data = rec.arrays.get(name)
        traj = float_traj[oname]
        if data is None:
            return None
        truth = np.full(traj.shape, np.nan, np.float32)
        for j, s in enumerate(contexts.indices):
            for t in range(traj.shape[0]):
                if spec.mode == "window":  # step t brings rows L + t*H ... L + (t+1)*H - 1 after the start
                    h = traj.shape[2]
                    a = s + c.shape[1] + t * h
                    avail = data[a : a + h]
                    truth[t, j, : len(avail)] = avail
                elif s + t + 1 < data.shape[0]:
                    truth[t, j] = data[s + t + 1]
        out[oname] = truth
    return out


def make_reference(model: Model, spec: RolloutSpec, contexts: Contexts, horizon: int) -> Reference:
    """Roll the float model out on the host (onnxruntime) and package it with the contexts and truth.

    Raises:
        DivergedRolloutError: the float model itself leaves the finite numbers within ``horizon``.
    """
    ref = float_reference(model, spec, contexts, horizon)
    if ref.first_nonfinite is not None:
        t = max(ref.first_nonfinite - 1, 1)
        raise DivergedRolloutError(
            f"the float model itself leaves the finite numbers at step {ref.first_nonfinite} of {horizon}",
            hint=Hint(
                "check-horizon",
                ("--horizon", str(t)),
                say="use {args}, or check the contexts' units",
                otherwise=f"the target's validation horizon is {horizon} steps: give a target file whose [validation] horizon is {t} or less, or check the contexts' units",
            ),
        )
    float_traj = {o: s.astype(np.float32) for (_, o), s in zip(spec.pairs, ref.steps)}
    first = next(i for i in model.inputs if i.name == spec.pairs[0][0])
    meta = ReferenceMeta(
        reference_version=REFERENCE_VERSION,
        model=model.name,
        model_sha256=model.sha256,
        horizon=horizon,
        spec=spec,
        variables=tuple(contexts.variables),
        contexts=contexts.info(),
        climatology=tuple(float(v) for m in contexts.means for v in m),
        spread=tuple(float(v) for s in contexts.spreads for v in s),
        inputs=tuple(IOInfo(name=i.name, shape=tuple(i.shape[1:]), dtype=str(np.dtype(i.dtype))) for i in model.inputs),
        outputs=tuple(IOInfo(name=o.name, shape=tuple(o.shape[1:])) for o in model.outputs),
        batch=first.shape[0] if first.shape else None,
    )
    return Reference(
        {n: c for (n, _), c in zip(spec.pairs, contexts.arrays)},
        dict(contexts.statics),
        float_traj,
        _truth(contexts, spec, float_traj),
        meta,
        contexts.forcing_arrays(horizon),
    )


def contexts_with_truth(inputs: Inputs, horizon: int, span: tuple[float, float] = (0.0, 1.0)) -> Contexts:
    """The same number of contexts, drawn from ``span`` of the record so that it still holds
    ``horizon`` steps after each (quantized vs truth and float vs truth then cover every lead);
    unchanged when it cannot."""
    return check_contexts(inputs.model, inputs.spec, inputs.contexts, horizon, span)


def check_contexts(model: Model, spec: RolloutSpec, ctx: Contexts, horizon: int, span: tuple[float, float] = (0.0, 1.0)) -> Contexts:
    """`contexts_with_truth` from its parts: the contexts a check of ``horizon`` steps draws from ``ctx``'s record."""
    from ..core.contexts import select_contexts

    if ctx.record is None or any(i < 0 for i in ctx.indices):
        return ctx
    n = ctx.record.arrays[spec.pairs[0][0]].shape[0]
    if spec.mode == "window":
        h = steps_per_call(model, spec)
        if h is None:  # a symbolic H: one call says
            one = dataclasses.replace(
                ctx,
                arrays=[a[:1] for a in ctx.arrays],
                indices=ctx.indices[:1],
                forcer=ctx.forcer.subset(slice(0, 1)) if ctx.forcer else None,
            )
            h = float_reference(model, spec, one, 1).steps[0].shape[2]
        need = ctx.arrays[0].shape[1] + horizon * h
    else:
        need = horizon + 1
    hi = 1.0 - (need - (ctx.arrays[0].shape[1] if spec.mode == "window" else 1)) / n
    hi = min(hi, span[1])
    if hi - span[0] <= 0.05:
        return ctx
    try:
        return select_contexts(ctx.record, model, spec, ctx.k, (span[0], hi), ctx.pick, ctx.seed)
    except EdgetqsError:
        return ctx


def io_description(meta: ReferenceMeta) -> dict[str, Any]:
    """The model's inputs and outputs as the on-device runners describe them."""
    return {"inputs": [i.model_dump(mode="json") for i in meta.inputs], "outputs": [o.model_dump(mode="json") for o in meta.outputs]}
