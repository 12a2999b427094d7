"""The model as a discrete-time dynamical system: how outputs feed back into inputs.

A `RolloutSpec` says which output becomes which input (``state`` mode) or how predicted steps
slide into a window (``window`` mode); `Rollout` runs it with one onnxruntime session whose
weights can be overridden per call, so a whole TQS sweep never rebuilds a session.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import RolloutSpecError
from .model import Model, TensorInfo

Mode = Literal["state", "window"]


@dataclass(frozen=True)
class RolloutSpec:
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
    """

    mode: Mode
    pairs: tuple[tuple[str, str], ...]
    increment: bool = False
    static: tuple[str, ...] = ()
    output_slice: str | None = None
    channel_axis: int | None = None

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "pairs": [list(p) for p in self.pairs],
            "increment": self.increment,
            "static": list(self.static),
            "output_slice": self.output_slice,
            "channel_axis": self.channel_axis,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "RolloutSpec":
        return cls(
            mode=d["mode"],
            pairs=tuple((str(a), str(b)) for a, b in d["pairs"]),
            increment=bool(d.get("increment", False)),
            static=tuple(d.get("static", ())),
            output_slice=d.get("output_slice"),
            channel_axis=d.get("channel_axis"),
        )

    @property
    def state_inputs(self) -> list[str]:
        return [p[0] for p in self.pairs]


@dataclass(frozen=True)
class SpecHints:
    """What a user declared (project file or CLI); anything left None is inferred."""

    mode: Mode | None = None
    pairs: tuple[tuple[str, str], ...] = ()
    increment: bool = False
    static: tuple[str, ...] = ()
    output_slice: str | None = None
    channel_axis: int | None = None


def parse_slice(text: str) -> tuple:
    """Parse a numpy-style index such as ``...,1`` or ``:, :, 0:3`` without eval."""
    parts: list = []
    for raw in text.strip().strip("[]").split(","):
        s = raw.strip()
        if s == "...":
            parts.append(Ellipsis)
        elif re.fullmatch(r"-?\d+", s):
            parts.append(int(s))
        elif re.fullmatch(r"(-?\d+)?:(-?\d+)?(:(-?\d+)?)?", s):
            nums = [int(x) if x not in ("", None) else None for x in s.split(":")]
            parts.append(slice(*nums))
        else:
            raise RolloutSpecError(f"output slice '{text}' has a part '{s}' that is not '...', an integer or start:stop; write e.g. '...,1'")
    return tuple(parts)


def _compatible(a: tuple[int | None, ...], b: tuple[int | None, ...]) -> bool:
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def _sliced_shape(info: TensorInfo, index: tuple | None) -> tuple[int | None, ...]:
    if index is None:
        return info.shape
    probe = np.empty([d if d is not None else 7 for d in info.shape], dtype=np.int8)
    try:
        out = probe[index].shape
    except IndexError as exc:
        raise RolloutSpecError(f"output slice does not fit output {info.describe()}: {exc}") from None
    # map back the symbolic dims we substituted with 7 where the slice kept them
    return tuple(None if (d == 7 and 7 not in [x for x in info.shape if x]) else d for d in out)


def infer_spec(model: Model, hints: SpecHints = SpecHints()) -> RolloutSpec:
    """Work out the rollout from the graph's inputs and outputs, honouring what was declared.

    Raises:
        RolloutSpecError: naming the inputs and outputs with their shapes when it is ambiguous.
    """
    ins = {i.name: i for i in model.inputs}
    outs = {o.name: o for o in model.outputs}
    listing = (
        "inputs: " + ", ".join(i.describe() for i in model.inputs) + "; outputs: " + ", ".join(o.describe() for o in model.outputs)
    )
    for s in hints.static:
        if s not in ins:
            raise RolloutSpecError(f"static input '{s}' is not an input of the model ({listing})")
    index = parse_slice(hints.output_slice) if hints.output_slice else None
    pairs = list(hints.pairs)
    for a, b in pairs:
        if a not in ins or b not in outs:
            raise RolloutSpecError(f"state pair '{a}={b}' does not name an input and an output of the model ({listing})")
    if not pairs:
        free_in = [n for n in ins if n not in hints.static]
        free_out = list(outs)
        if len(free_in) == 1 and len(free_out) == 1:
            pairs = [(free_in[0], free_out[0])]
        else:
            for n in free_in:
                matches = [o for o in free_out if _compatible(ins[n].shape, _sliced_shape(outs[o], index))]
                if len(matches) == 1:
                    pairs.append((n, matches[0]))
                else:
                    pairs = []
                    break
            unpaired = [n for n in free_in if n not in {p[0] for p in pairs}]
            if not pairs or unpaired:
                raise RolloutSpecError(
                    "cannot infer which outputs feed back into which inputs (" + listing + "); "
                    "declare them with --state INPUT=OUTPUT and --static NAME, or [rollout] state/static in edgetqs.toml"
                )
    mode = hints.mode
    a, b = pairs[0]
    ishape, oshape = ins[a].shape, _sliced_shape(outs[b], index)
    if mode is None:
        if all(_compatible(ins[x].shape, _sliced_shape(outs[y], index)) for x, y in pairs):
            mode = "state"
        elif len(pairs) == 1 and len(ishape) == 3 and len(oshape) == 3 and _compatible((ishape[0], ishape[2]), (oshape[0], oshape[2])):
            mode = "window"
        else:
            raise RolloutSpecError(
                f"input {ins[a].describe()} and output {outs[b].describe()} neither have the same shape (state mode) "
                f"nor are [B, L, C] -> [B, H, C] (window mode) ({listing}); declare --mode and --output-slice"
            )
    if mode == "window":
        if len(pairs) != 1 or len(ishape) != 3 or len(oshape) != 3:
            raise RolloutSpecError(f"window mode needs one input [B, L, C] and one output [B, H, C] ({listing})")
        if ishape[1] is not None and oshape[1] is not None and oshape[1] > ishape[1]:
            raise RolloutSpecError(f"window mode: output {outs[b].describe()} predicts more steps than input {ins[a].describe()} holds")
    else:
        for x, y in pairs:
            if not _compatible(ins[x].shape, _sliced_shape(outs[y], index)):
                raise RolloutSpecError(f"state mode: output {outs[y].describe()} does not have the shape of input {ins[x].describe()}")
    channel_axis = hints.channel_axis
    if channel_axis is None:
        rank = len(ishape)
        channel_axis = -1 if (mode == "window" or rank == 3) else (1 if rank >= 2 else 0)
    return RolloutSpec(mode, tuple(pairs), hints.increment, tuple(hints.static), hints.output_slice, channel_axis)


@dataclass
class RolloutResult:
    """Trajectories of one rollout: per fed-back output, array [T, K, ...] of what each step produced."""

    steps: list[np.ndarray]  # one per pair
    forward_calls: int
    first_nonfinite: int | None = None  # 1-based step where a non-finite value first appeared


class Rollout:
    """Runs a model autoregressively with one onnxruntime session.

    Args:
        model: the model.
        spec: how outputs feed back.
        statics: value (without batch axis) of each static input.
        threads: intra-op threads of the session (1 inside parallel workers).
        model_bytes: the graph to run; default: the model with every weight overridable per run.
        ort_format: ``model_bytes`` is an ORT-format (``.ort``) model, not ONNX.
        session: any object with onnxruntime's ``run(output_names, feeds)`` (e.g. a LiteRT
            interpreter adapter) to roll out instead of an onnxruntime session.
    """

    def __init__(self, model: Model, spec: RolloutSpec, statics: dict[str, np.ndarray] | None = None,
                 threads: int = 0, model_bytes: bytes | None = None, ort_format: bool = False, session: object | None = None) -> None:
        self.model = model
        self.spec = spec
        self.statics = {k: np.asarray(v) for k, v in (statics or {}).items()}
        missing = [s for s in spec.static if s not in self.statics]
        if missing:
            raise RolloutSpecError(f"static input(s) {missing} need values: put arrays with those names in the contexts .npz")
        if session is not None:
            self.session = session
        else:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            if ort_format:
                opts.add_session_config_entry("session.load_model_format", "ORT")
            graph = model.overridable_bytes() if model_bytes is None else model_bytes
            self.session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        self.out_names = [p[1] for p in spec.pairs]
        self.index = parse_slice(spec.output_slice) if spec.output_slice else None
        ins = {i.name: i for i in model.inputs}
        b = ins[spec.pairs[0][0]].shape[0] if ins[spec.pairs[0][0]].shape else None
        self.fixed_batch: int | None = b  # None: any batch size
        self.input_dtypes = {i.name: np.dtype(i.dtype) for i in model.inputs}
        self.forward_calls = 0

    def step(self, state: list[np.ndarray], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One model call: returns what each pair produced this step (window: the H new steps)."""
        for (name, _), x in zip(self.spec.pairs, state):
            feeds[name] = x
        outs = self.session.run(self.out_names, feeds)
        self.forward_calls += 1
        produced = []
        for x, y in zip(state, outs):
            if self.index is not None:
                y = y[self.index]
            if self.spec.increment:
                y = (x[:, -1:, :] + y) if self.spec.mode == "window" else (x + y)
            produced.append(y.astype(x.dtype, copy=False))
        return produced

    def advance(self, state: list[np.ndarray], produced: list[np.ndarray]) -> list[np.ndarray]:
        if self.spec.mode == "state":
            return produced
        x, y = state[0], produced[0]
        h = y.shape[1]
        return [np.concatenate([x[:, h:, :], y], axis=1) if h < x.shape[1] else y[:, -x.shape[1]:, :]]

    def run(self, contexts: list[np.ndarray], horizon: int, overrides: dict[str, np.ndarray] | None = None) -> RolloutResult:
        """Roll out every context for ``horizon`` steps, batching contexts when the model allows.

        Args:
            contexts: per pair, the initial inputs [K, ...].
            horizon: number of model steps.
            overrides: weight name -> replacement value for this rollout only.
        """
        k = contexts[0].shape[0]
        chunk = self.fixed_batch or k
        calls0 = self.forward_calls
        pieces: list[list[np.ndarray]] = []
        with np.errstate(all="ignore"):  # overflow is a finding, reported by first_nonfinite
            for start in range(0, k, chunk):
                stop = min(start + chunk, k)
                state = [np.ascontiguousarray(c[start:stop], dtype=self.input_dtypes[name]) for c, (name, _) in zip(contexts, self.spec.pairs)]
                n = stop - start
                if n < chunk:  # fixed batch: pad with copies of the last context, dropped after
                    state = [np.concatenate([s, np.repeat(s[-1:], chunk - n, axis=0)]) for s in state]
                feeds: dict[str, np.ndarray] = {
                    s: np.ascontiguousarray(np.broadcast_to(v.astype(self.input_dtypes[s], copy=False), (chunk,) + v.shape)) for s, v in self.statics.items()
                }
                if overrides:
                    feeds.update(overrides)
                traj: list[list[np.ndarray]] = [[] for _ in state]
                for _ in range(horizon):
                    produced = self.step(state, feeds)
                    for j, y in enumerate(produced):
                        traj[j].append(y[:n])
                    state = self.advance(state, produced)
                pieces.append([np.stack(t) for t in traj])
            steps = [np.concatenate([p[j] for p in pieces], axis=1) for j in range(len(self.spec.pairs))]
        bad = None
        for s in steps:
            finite = np.isfinite(s.reshape(s.shape[0], -1)).all(axis=1)
            if not finite.all():
                t = int(np.argmin(finite)) + 1
                bad = t if bad is None else min(bad, t)
        return RolloutResult(steps, self.forward_calls - calls0, bad)


__all__ = ["RolloutSpec", "SpecHints", "Rollout", "RolloutResult", "infer_spec", "parse_slice"]
