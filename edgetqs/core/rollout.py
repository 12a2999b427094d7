"""The model as a discrete-time dynamical system: how outputs feed back into inputs.

A `RolloutSpec` says which output becomes which input (``state`` mode) or how predicted steps
slide into a window (``window`` mode); `Rollout` runs it with one onnxruntime session whose
weights can be overridden per call, so a whole TQS sweep never rebuilds a session.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import Hint, RolloutSpecError
from ..ondevice.step import Feedback, closed_loop, first_nonfinite
from ..ondevice.step import parse_slice as _parse_slice
from .forcings import Forcing, check_site
from .model import Model, TensorInfo
from .results import Frozen

Mode = Literal["state", "window"]
# a rollout's forcing values: per input [K, >= T, ...], or a function of the horizon giving them
Forcings = Mapping[str, np.ndarray] | Callable[[int], Mapping[str, np.ndarray]]
WindowForm = Literal["steps", "one-step", "univariate", "univariate-one-step"]


class RolloutSpec(Frozen):
    """How one model step maps to the next.

    Attributes:
        mode: ``state`` (x_{t+1} = F(x_t), outputs replace the inputs of the same shape) or
            ``window`` (input [B, L, C], output [B, H, C]: append H steps, drop the oldest H).
        pairs: (input name, output name) for each fed-back tensor.
        increment: the model predicts the change: next = input + output (window: last step + output).
        static: inputs held fixed along the rollout (masks, orography); values come with the contexts.
        output_slice: a numpy-style index applied to each fed-back output first, e.g. ``...,1``
            to take the median of three quantiles on the last axis.
        channel_axis: axis (with batch) of the variables, for per-channel normalisation.
        window_form: window mode: the model's shapes (`window_form`); the rollout holds every window as
            [B, L, C] and every prediction as [B, H, C] whatever the form.
        forcings: inputs read per step and never fed back (`edgetqs.core.forcings`: record columns, time of
            day, day of year, solar elevation).
        latitude, longitude: the site in degrees north and east (a solar elevation forcing needs it).
    """

    mode: Mode
    pairs: tuple[tuple[str, str], ...]
    increment: bool = False
    static: tuple[str, ...] = ()
    output_slice: str | None = None
    channel_axis: int | None = None
    window_form: WindowForm = "steps"
    forcings: tuple[Forcing, ...] = ()
    latitude: float | None = None
    longitude: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @property
    def state_inputs(self) -> list[str]:
        return [p[0] for p in self.pairs]

    def feedback(self) -> Feedback:
        return Feedback(self.mode == "window", self.increment, self.output_slice, self.window_form)


@dataclass(frozen=True)
class SpecHints:
    """What a user declared (project file or CLI); anything left None is inferred."""

    mode: Mode | None = None
    pairs: tuple[tuple[str, str], ...] = ()
    increment: bool = False
    static: tuple[str, ...] = ()
    output_slice: str | None = None
    channel_axis: int | None = None
    forcings: tuple[Forcing, ...] = ()
    latitude: float | None = None
    longitude: float | None = None


def parse_slice(text: str) -> tuple[Any, ...]:
    """Parse a numpy-style index such as ``...,1`` or ``:, :, 0:3`` without eval.

    Raises:
        RolloutSpecError: a part that is not ``...``, an integer or start:stop.
    """
    try:
        return _parse_slice(text)
    except ValueError as exc:
        raise RolloutSpecError(str(exc)) from None


_BATCH_PROBE = 7919  # a batch size no real axis has: a slice that changes it touches the batch axis


def _compatible(a: tuple[int | None, ...], b: tuple[int | None, ...]) -> bool:
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def _sliced_shape(info: TensorInfo, index: tuple | None) -> tuple[int | None, ...]:
    if index is None:
        return info.shape
    probe = np.empty([d if d is not None else 7 for d in info.shape], dtype=np.int8)
    try:
        out = probe[index].shape
        # the batch axis must pass whole (each context feeds its own row back): probe it with an odd size
        batch = np.empty([_BATCH_PROBE, *probe.shape[1:]], dtype=np.int8)[index].shape if probe.ndim else ()
    except (IndexError, ValueError) as exc:
        raise RolloutSpecError(f"output slice does not fit output {info.describe()}: {exc}") from None
    if not batch or batch[0] != _BATCH_PROBE:
        raise RolloutSpecError(
            f"output slice must keep the batch axis 0 of output {info.describe()} whole; index the other axes, e.g. '...,1'"
        )
    if 0 in out:
        raise RolloutSpecError(f"output slice selects nothing of output {info.describe()} (shape {list(out)}); check the ranges")
    # map back the symbolic dims we substituted with 7 where the slice kept them
    return tuple(None if (d == 7 and 7 not in [x for x in info.shape if x]) else d for d in out)


def window_form(ishape: tuple[int | None, ...], oshape: tuple[int | None, ...]) -> WindowForm | None:
    """Which window model maps input ``ishape`` to output ``oshape`` (batch first), or None.

    ``steps`` [B, L, C] -> [B, H, C]; ``one-step`` [B, L, C] -> [B, C] (H = 1, as PyTorch and Keras export
    a one-step forecaster); ``univariate`` [B, L] -> [B, H]; ``univariate-one-step`` [B, L] -> [B]. The
    number of steps is not checked here (`infer_spec` does).
    """
    ri, ro = len(ishape), len(oshape)
    if ri == 3 and ro == 3 and _compatible((ishape[0], ishape[2]), (oshape[0], oshape[2])):
        return "steps"
    if ri == 3 and ro == 2 and _compatible((ishape[0], ishape[2]), oshape):
        return "one-step"
    if ri == 2 and ro == 2 and _compatible(ishape[:1], oshape[:1]):
        return "univariate"
    if ri == 2 and ro == 1 and _compatible(ishape[:1], oshape[:1]):
        return "univariate-one-step"
    return None


def window_steps(form: WindowForm, oshape: tuple[int | None, ...]) -> int | None:
    """H, the steps one call predicts, from the (sliced) output shape (None: symbolic)."""
    return oshape[1] if form in ("steps", "univariate") else 1


def steps_per_call(model: Model, spec: RolloutSpec) -> int | None:
    """Window mode: H, the steps one model call appends (None: a symbolic dimension); state mode: 1."""
    if spec.mode != "window":
        return 1
    out = next(o for o in model.outputs if o.name == spec.pairs[0][1])
    return window_steps(spec.window_form, _sliced_shape(out, parse_slice(spec.output_slice) if spec.output_slice else None))


def sample_shape(spec: RolloutSpec, shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
    """A state input's per-context shape as the loop holds it, from the model's input shape (batch first):
    a univariate window [B, L] is held as [L, 1]."""
    sample = tuple(shape[1:])
    return (*sample, 1) if spec.mode == "window" and spec.window_form.startswith("univariate") else sample


def _slice_hint(info: TensorInfo, ishape: tuple[int | None, ...]) -> Hint | None:
    """An output slice that makes ``info`` feed back into an input shaped ``ishape`` (a quantile axis: its middle)."""
    q = info.shape[-1] if info.shape else None
    if q is None or q < 2 or len(info.shape) < 2:
        return None
    mid = q // 2
    for text in (f"...,{mid}:{mid + 1}", f"...,{mid}"):
        out = _sliced_shape(info, parse_slice(text))
        if _compatible(ishape, out) or window_form(ishape, out) is not None:
            return Hint(
                "rollout-output-slice",
                ("--output-slice", text),
                say=f"choose which of the {q} values on the output's last axis feeds back, e.g. {{args}} (the middle one)",
                project=(("rollout.output_slice", text),),
            )
    return None


def infer_spec(model: Model, hints: SpecHints | None = None) -> RolloutSpec:
    """Work out the rollout from the graph's inputs and outputs, honouring what was declared.

    One input and one output of the same shape: ``state``. One input and one output shaped as a window
    model (`window_form`: [B, L, C] -> [B, H, C] or [B, C], [B, L] -> [B, H] with H < L, or [B]): ``window``.

    Raises:
        RolloutSpecError: naming the inputs and outputs with their shapes when it is ambiguous.
    """
    hints = hints or SpecHints()
    ins = {i.name: i for i in model.inputs}
    outs = {o.name: o for o in model.outputs}
    listing = "inputs: " + ", ".join(i.describe() for i in model.inputs) + "; outputs: " + ", ".join(o.describe() for o in model.outputs)
    for s in hints.static:
        if s not in ins:
            raise RolloutSpecError(f"static input '{s}' is not an input of the model ({listing})")
    forced = [f.input for f in hints.forcings]
    for f in hints.forcings:
        if f.input not in ins:
            raise RolloutSpecError(f"forcing '{f.text()}' names '{f.input}', which is not an input of the model ({listing})")
        if f.input in hints.static or forced.count(f.input) > 1 or f.input in (a for a, _ in hints.pairs):
            raise RolloutSpecError(f"input '{f.input}' is declared more than once (state, static or forcing); declare each input once")
    check_site(hints.latitude, hints.longitude, hints.forcings)
    index = parse_slice(hints.output_slice) if hints.output_slice else None
    pairs = list(hints.pairs)
    for a, b in pairs:
        if a not in ins or b not in outs:
            raise RolloutSpecError(f"state pair '{a}={b}' does not name an input and an output of the model ({listing})")
    if not pairs:
        free_in = [n for n in ins if n not in hints.static and n not in forced]
        free_out = list(outs)
        windows = [n for n in free_in if len(free_out) == 1 and window_form(ins[n].shape, _sliced_shape(outs[free_out[0]], index))]
        if len(free_in) == 1 and len(free_out) == 1:
            pairs = [(free_in[0], free_out[0])]
        elif len(windows) == 1 and not any(_compatible(ins[n].shape, _sliced_shape(outs[free_out[0]], index)) for n in free_in):
            pairs = [(windows[0], free_out[0])]  # one window input; the others are checked below (forcings, statics)
        else:
            matches = {n: [o for o in free_out if _compatible(ins[n].shape, _sliced_shape(outs[o], index))] for n in free_in}
            pairs = [(n, m[0]) for n, m in matches.items() if len(m) == 1]
            if len(pairs) != len(free_in):
                unique = len({m[0] for m in matches.values() if len(m) == 1}) == len(pairs)
                if not (pairs and unique and all(len(m) <= 1 for m in matches.values())):
                    raise RolloutSpecError(
                        "cannot infer which outputs feed back into which inputs ("
                        + listing
                        + "); declare them with --state INPUT=OUTPUT and --static NAME (--forcing INPUT=SOURCE for inputs "
                        "read per step), or [rollout] state/static/forcing in edgetqs.toml"
                    )
                # else: the unmatched inputs are fixed or forcing ones, which `_undeclared` names
    if not pairs:
        raise RolloutSpecError(
            f"no input is left to feed back: every input is declared static or a forcing ({listing}); "
            "declare the fed-back one with --state INPUT=OUTPUT, not as a forcing"
        )
    _undeclared(model, pairs, hints, listing, index)
    mode = hints.mode
    a, b = pairs[0]
    ishape, oshape = ins[a].shape, _sliced_shape(outs[b], index)
    same = all(_compatible(ins[x].shape, _sliced_shape(outs[y], index)) for x, y in pairs)
    form = window_form(ishape, oshape) if len(pairs) == 1 else None
    if mode is None:
        if same:
            mode = "state"
        elif form is not None:
            mode = "window"
        else:
            hint = _slice_hint(outs[b], ishape) if index is None else None
            raise RolloutSpecError(
                f"input {ins[a].describe()} and output {outs[b].describe()} neither have the same shape (state mode) "
                f"nor are a window model [B, L, C] -> [B, H, C] or [B, C], [B, L] -> [B, H] ({listing})"
                + ("" if hint else "; export the model in one of these forms, or slice the output with --output-slice"),
                hint=hint,
            )
    if mode == "window":
        if form is None:
            hint = Hint(
                "rollout-mode",
                ("--mode", "state"),
                say="use {args}: the output has the input's shape",
                project=(("rollout.mode", "state"),),
            )
            raise RolloutSpecError(
                f"window mode needs one input [B, L, C] and one output [B, H, C] or [B, C] (or [B, L] -> [B, H]); "
                f"got input {ins[a].describe()} and output {outs[b].describe()} ({listing})",
                hint=hint if same else _slice_hint(outs[b], ishape),
            )
        h, length = window_steps(form, oshape), ishape[1]
        if length is not None and h is not None and h > length:
            raise RolloutSpecError(f"window mode: output {outs[b].describe()} predicts more steps than input {ins[a].describe()} holds")
    else:
        form = "steps"
        for x, y in pairs:
            if not _compatible(ins[x].shape, _sliced_shape(outs[y], index)):
                hint = None
                if len(pairs) == 1 and window_form(ins[x].shape, _sliced_shape(outs[y], index)) is not None:
                    hint = Hint(
                        "rollout-mode",
                        ("--mode", "window"),
                        say="use {args}: the shapes are a window model's",
                        project=(("rollout.mode", "window"),),
                    )
                raise RolloutSpecError(
                    f"state mode: output {outs[y].describe()} does not have the shape of input {ins[x].describe()}", hint=hint
                )
    channel_axis = hints.channel_axis
    rank = len(ishape)
    if channel_axis is not None and not (1 <= channel_axis < rank or -rank < channel_axis <= -1):
        raise RolloutSpecError(
            f"channel axis {channel_axis}; input {ins[a].describe()} has axes 1..{rank - 1} (or -{rank - 1}..-1) besides the batch axis 0"
        )
    if channel_axis is None:
        channel_axis = -1 if (mode == "window" or rank == 3) else (1 if rank >= 2 else 0)
    return RolloutSpec(
        mode=mode,
        pairs=tuple(pairs),
        increment=hints.increment,
        static=tuple(hints.static),
        output_slice=hints.output_slice,
        channel_axis=channel_axis,
        window_form=form,
        forcings=tuple(hints.forcings),
        latitude=hints.latitude,
        longitude=hints.longitude,
    )


def _undeclared(model: Model, pairs: list[tuple[str, str]], hints: SpecHints, listing: str, index: tuple | None) -> None:
    """Every model input must be fed back, static or a forcing: name one that is none of them, with a
    declaration that fits its shape when one can be guessed (two features: time of day as (sin, cos))."""
    known = {a for a, _ in pairs} | set(hints.static) | {f.input for f in hints.forcings}
    left = [i for i in model.inputs if i.name not in known]
    if not left:
        return
    info = left[0]
    width = info.shape[-1] if len(info.shape) >= 2 else None
    align = ""
    first = next(i for i in model.inputs if i.name == pairs[0][0])
    out = next(o for o in model.outputs if o.name == pairs[0][1])
    oshape = _sliced_shape(out, index)
    if len(info.shape) == 3 and len(first.shape) == 3:  # a window model's [B, L or H, F] forcing
        if info.shape[1] != first.shape[1] and len(oshape) == 3 and info.shape[1] == oshape[1]:
            align = "@predicted"
        elif info.shape[1] != first.shape[1]:
            width = None
    if width == 2 and len(left) == 1:
        hint = Hint(
            "rollout-forcing",
            ("--forcing", f"{info.name}=hour_of_day{align}"),
            say="declare it a forcing, e.g. the time of day as (sin, cos): {args}",
            project=(("rollout.forcing", [f"{info.name}=hour_of_day{align}"]),),
        )
    else:
        lone = [i.name for i in left]
        hint = Hint(
            "rollout-static",
            tuple(x for n in lone for x in ("--static", n)),
            say="declare the inputs that no output feeds, {args}, or pair them with --state INPUT=OUTPUT "
            "(inputs read per step: --forcing INPUT=SOURCE)",
            project=(("rollout.static", lone),),
        )
    raise RolloutSpecError(
        f"input{'s' if len(left) > 1 else ''} {', '.join(i.describe() for i in left)} {'are' if len(left) > 1 else 'is'} neither fed back "
        f"nor static nor a forcing ({listing}); declare a per-step input with --forcing INPUT=SOURCE ([rollout] forcing in edgetqs.toml), "
        "SOURCE one of hour_of_day, day_of_year (sin, cos), solar_elevation (with --latitude/--longitude), column:NAME[,NAME] "
        "(arrays of the record), joined with '+' and ending in @predicted to read the predicted steps; or a fixed one with --static NAME",
        hint=hint,
    )


def describe_spec(model: Model, spec: RolloutSpec) -> str:
    """One line that says how the model rolls out, e.g. ``window mode (one-step): x[?, 48, 5] -> y[?, 5] ...``."""
    ins = {i.name: i for i in model.inputs}
    outs = {o.name: o for o in model.outputs}
    a, b = spec.pairs[0]
    if spec.mode == "state":
        return "state mode: " + ", ".join(f"{outs[y].describe()} replaces {ins[x].describe()}" for x, y in spec.pairs)
    oshape = _sliced_shape(outs[b], parse_slice(spec.output_slice) if spec.output_slice else None)
    h = window_steps(spec.window_form, oshape)
    what = {
        "steps": "appends H = {h} predicted steps and drops the oldest",
        "one-step": "a one-step window model: appends its prediction (H = 1) and drops the oldest step",
        "univariate": "a univariate window model: appends H = {h} predicted values and drops the oldest",
        "univariate-one-step": "a univariate one-step window model: appends its prediction and drops the oldest",
    }[spec.window_form].format(h="?" if h is None else h)
    return f"window mode ({spec.window_form}): {ins[a].describe()} -> {outs[b].describe()}, {what}"


@dataclass
class RolloutResult:
    """Trajectories of one rollout: per fed-back output, array [T, K, ...] of what each step produced."""

    steps: list[np.ndarray]  # one per pair
    forward_calls: int
    first_nonfinite: int | None = None  # 1-based step where a non-finite value first appeared


class Rollout:
    """Runs a model autoregressively (`edgetqs.ondevice.step.closed_loop`, the code the device driver runs).

    Args:
        model: the model.
        spec: how outputs feed back.
        statics: value (without batch axis) of each static input.
        threads: intra-op threads of the session (1 inside parallel workers).
        model_bytes: the graph to run; default: the model with every weight overridable per run (a
            `SharedSession` on the model's own arrays).
        ort_format: ``model_bytes`` is an ORT-format (``.ort``) model, not ONNX.
        session: any object with onnxruntime's ``run(output_names, feeds)`` (e.g. a LiteRT runner) to
            roll out instead of an onnxruntime session.
        forcings: the values of the spec's forcing inputs for the contexts a run is given: per input
            [K, >= T, ...], or a function of the horizon that returns them (`Contexts.forcing_arrays`).
    """

    def __init__(
        self,
        model: Model,
        spec: RolloutSpec,
        statics: dict[str, np.ndarray] | None = None,
        threads: int = 0,
        model_bytes: bytes | None = None,
        ort_format: bool = False,
        session: Any = None,
        forcings: Forcings | None = None,
    ) -> None:
        self.model = model
        self.spec = spec
        self.forcings = forcings
        self.statics = {k: np.asarray(v) for k, v in (statics or {}).items()}
        missing = [s for s in spec.static if s not in self.statics]
        if missing:
            raise RolloutSpecError(f"static input(s) {missing} need values: put arrays with those names in the contexts .npz")
        if session is None and model_bytes is None:
            from .session import SharedSession

            session = SharedSession(model, feed=True, threads=threads)  # weights overridable per run, shared with the model
        elif session is None and model_bytes is not None:
            from ..ondevice.runners import OrtRunner

            session = OrtRunner(model_bytes, ort_format=ort_format, threads=threads)
        self.session = session
        self.feedback = spec.feedback()
        first = next(i for i in model.inputs if i.name == spec.pairs[0][0])
        self.fixed_batch: int | None = first.shape[0] if first.shape else None  # None: any batch size
        self.input_dtypes = {i.name: np.dtype(i.dtype) for i in model.inputs}
        self.forward_calls = 0

    def forcing_values(self, horizon: int, k: int, rows: slice | np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The forcing inputs' values for ``k`` contexts (``rows`` of those the rollout was given), [k, T, ...].

        Raises:
            RolloutSpecError: the spec has forcings but no values were given, or not for these contexts.
        """
        if not self.spec.forcings:
            return {}
        names = [f.input for f in self.spec.forcings]
        if self.forcings is None:
            raise RolloutSpecError(
                f"forcing input(s) {names} need values per step: roll out contexts read from a record (they carry its "
                "timestamps and arrays), or give the values [K, T, ...]"
            )
        got = self.forcings(horizon) if callable(self.forcings) else self.forcings
        out = {}
        for n in names:
            if n not in got:
                raise RolloutSpecError(f"forcing input '{n}' has no values; expected arrays for {names}")
            v = np.asarray(got[n])
            v = v[rows if rows is not None else slice(None)] if v.ndim >= 2 else v
            if v.ndim < 2 or v.shape[0] != k or v.shape[1] < horizon:
                raise RolloutSpecError(
                    f"forcing input '{n}' has values {list(v.shape)} for a rollout of {k} contexts and {horizon} steps; expected [{k}, >={horizon}, ...]"
                )
            out[n] = v[:, :horizon]
        return out

    def run(
        self,
        contexts: Sequence[np.ndarray],
        horizon: int,
        overrides: dict[str, np.ndarray] | None = None,
        rows: slice | np.ndarray | None = None,
    ) -> RolloutResult:
        """Roll out every context for ``horizon`` steps, batching contexts when the model allows.

        Args:
            contexts: per pair, the initial inputs [K, ...].
            horizon: number of model steps.
            overrides: weight name -> replacement value for this rollout only.
            rows: which of the rollout's contexts these are (their forcing values); default: all of them.
        """
        forcings = self.forcing_values(horizon, int(contexts[0].shape[0]), rows)
        with np.errstate(all="ignore"):  # overflow is a finding, reported by first_nonfinite
            steps, calls = closed_loop(
                self.session.run,
                self.spec.pairs,
                contexts,
                horizon,
                self.feedback,
                statics=self.statics,
                forcings=forcings,
                overrides=overrides,
                batch=self.fixed_batch,
                dtypes=self.input_dtypes,
            )
        self.forward_calls += calls
        return RolloutResult(steps, calls, first_nonfinite(steps))


def float_reference(model: Model, spec: RolloutSpec, contexts: Any, horizon: int) -> RolloutResult:
    """The float model's own rollout from ``contexts`` (a `Contexts`), on a fully optimised session: the
    trajectory every quantized rollout is compared with."""
    return Rollout(model, spec, contexts.statics, model_bytes=model.bytes, forcings=contexts.forcing_arrays).run(contexts.arrays, horizon)


class _Recorder:
    """Wraps a session and keeps every row it is fed (every call whole for a fixed-batch model, whose graph
    takes exactly its B rows)."""

    def __init__(self, session: Any, whole: bool = False) -> None:
        self.session = session
        self.whole = whole
        self.rows: list[dict[str, np.ndarray]] = []

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.whole:
            self.rows.append({k: np.array(v) for k, v in feeds.items()})
        else:
            batch = next(iter(feeds.values())).shape[0]
            for b in range(batch):
                self.rows.append({k: np.array(v[b : b + 1]) for k, v in feeds.items()})
        return list(self.session.run(names, feeds))


def closed_loop_inputs(model: Model, spec: RolloutSpec, contexts: Any, horizon: int) -> list[dict[str, np.ndarray]]:
    """Every input row (batch 1; B rows for a model with a fixed batch B) the float model sees while rolling each context out for ``horizon`` steps:
    the calibration set of full-integer and GPTQ rounding. An autoregressive model leaves the teacher-forced
    range as it rolls out, so ranges and Hessians come from its own closed loop."""
    from ..ondevice.runners import OrtRunner

    roll = Rollout(model, spec, contexts.statics, session=OrtRunner(model.bytes, threads=0), forcings=contexts.forcing_arrays)
    rec = _Recorder(roll.session, whole=roll.fixed_batch is not None)
    roll.session = rec
    roll.run(contexts.arrays, horizon)
    return rec.rows


__all__ = [
    "Rollout",
    "RolloutResult",
    "RolloutSpec",
    "SpecHints",
    "closed_loop_inputs",
    "describe_spec",
    "float_reference",
    "infer_spec",
    "parse_slice",
    "sample_shape",
    "steps_per_call",
    "window_form",
    "window_steps",
]
