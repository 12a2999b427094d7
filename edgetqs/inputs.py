"""Resolve what a command works on (model, rollout spec, contexts) from CLI options and `edgetqs.toml`.

Precedence: an option given on the command line beats the project file, which beats inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .contexts import Contexts, read_record, select_contexts, spinup_contexts
from .errors import BadInputError
from .model import Model, load_model
from .project import Project
from .rollout import RolloutSpec, SpecHints, infer_spec


@dataclass(frozen=True)
class Inputs:
    model: Model
    spec: RolloutSpec
    contexts: Contexts
    notes: tuple[str, ...]


def parse_span(text: str | None) -> tuple[float, float]:
    """'0:0.5' -> (0.0, 0.5): the fraction of the record contexts are drawn from."""
    if not text:
        return (0.0, 1.0)
    try:
        a, b = (float(x) if x else d for x, d in zip(text.split(":"), (0.0, 1.0)))
    except ValueError:
        raise BadInputError(f"span '{text}'; expected START:STOP fractions of the record, e.g. 0:0.5") from None
    if not 0.0 <= a < b <= 1.0:
        raise BadInputError(f"span '{text}'; expected 0 <= START < STOP <= 1")
    return (a, b)


def parse_pairs(items: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for it in items:
        if "=" not in it:
            raise BadInputError(f"state pair '{it}'; expected INPUT=OUTPUT")
        a, b = it.split("=", 1)
        out.append((a.strip(), b.strip()))
    return tuple(out)


def resolve(model_path: Path | None, project: Project | None, *, contexts_path: Path | None = None,
            variables: list[str] | None = None, k: int | None = None, span: str | None = None, spinup: bool = False,
            spinup_scale: float = 1.0, seed: int = 0, mode: str | None = None, state: list[str] | None = None,
            increment: bool | None = None, static: list[str] | None = None, output_slice: str | None = None,
            channel_axis: int | None = None) -> Inputs:
    """Load the model, work out the rollout and cut the contexts.

    Raises:
        BadInputError: no model given and no project file; plus whatever loading raises.
    """
    proj = project
    path = model_path or (proj.model if proj else None)
    if path is None:
        raise BadInputError("no model given: pass MODEL (an .onnx file) or run in a folder with an edgetqs.toml (see `edgetqs init`)")
    model = load_model(path)
    if proj and proj.name and model_path is None:
        model.name = proj.name
    r = proj.rollout if proj else {}
    hints = SpecHints(
        mode=mode or r.get("mode"),
        pairs=parse_pairs(state or r.get("state", [])),
        increment=r.get("increment", False) if increment is None else increment,
        static=tuple(static or r.get("static", ())),
        output_slice=output_slice or r.get("output_slice"),
        channel_axis=channel_axis if channel_axis is not None else r.get("channel_axis"),
    )
    if hints.mode not in (None, "state", "window"):
        raise BadInputError(f"rollout mode '{hints.mode}'; expected 'state' or 'window'")
    spec = infer_spec(model, hints)
    kk = k if k is not None else (proj.k if proj and proj.k else 8)
    vars_ = variables or (list(proj.variables) if proj and proj.variables else None)
    cpath = contexts_path or (proj.contexts if proj and not spinup else None)
    notes: list[str] = []
    if cpath is None:
        statics = {}
        if spec.static:
            raise BadInputError(f"static inputs {list(spec.static)} need values from a contexts .npz; spin-up cannot invent them")
        ctx = spinup_contexts(model, spec, kk, seed=seed, scale=spinup_scale, statics=statics)
        notes.append(f"contexts: data-free spin-up from noise (seed {seed}, scale {spinup_scale}); no contexts file was given")
    else:
        rec = read_record(cpath, spec, vars_)
        ctx = select_contexts(rec, model, spec, kk, parse_span(span))
        if vars_ and not ctx.variables:
            ctx = Contexts(ctx.arrays, ctx.statics, tuple(vars_), ctx.source, ctx.indices, ctx.record)
    return Inputs(model, spec, ctx, tuple(notes))
