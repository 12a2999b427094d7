"""Resolve what a command works on (model, rollout spec, contexts) from the caller's options and `edgetqs.toml`.

Precedence (`edgetqs.core.project.merged`): an option given by the caller beats the project file, which
beats inference.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from .contexts import Contexts, read_record, select_contexts, spinup_contexts
from .forcings import parse_forcing
from .missing import check_fill
from .model import Model, load_model
from .project import Project, RolloutConfig, merged
from .rollout import RolloutSpec, SpecHints, describe_spec, infer_spec

MAX_CONTEXTS = 100_000  # K: every context is one batch row of every rollout
MAX_SPINUP_SCALE = 1e6


@dataclass(frozen=True)
class Inputs:
    model: Model
    spec: RolloutSpec
    contexts: Contexts
    notes: tuple[str, ...]


def parse_span(text: str | None) -> tuple[float, float]:
    """'0:0.5' -> (0.0, 0.5): the fraction of the record contexts are drawn from (None: all of it)."""
    if text is None:
        return (0.0, 1.0)
    parts = str(text).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        a, b = (float(x) if x.strip() else d for x, d in zip(parts, (0.0, 1.0)))
    except ValueError:
        raise BadInputError(f"span '{text}'; expected START:STOP fractions of the record, e.g. 0:0.5") from None
    if not 0.0 <= a < b <= 1.0:
        raise BadInputError(f"span '{text}'; expected 0 <= START < STOP <= 1")
    return (a, b)


def parse_pairs(items: tuple[str, ...] | list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for it in items:
        if "=" not in it:
            raise BadInputError(f"state pair '{it}'; expected INPUT=OUTPUT")
        a, b = it.split("=", 1)
        out.append((a.strip(), b.strip()))
    return tuple(out)


def spec_hints(cfg: RolloutConfig) -> SpecHints:
    return SpecHints(
        mode=cfg.mode,
        pairs=parse_pairs(cfg.state),
        increment=bool(cfg.increment),
        static=tuple(cfg.static),
        output_slice=cfg.output_slice,
        channel_axis=cfg.channel_axis,
        forcings=tuple(parse_forcing(f) for f in cfg.forcing),
        latitude=cfg.latitude,
        longitude=cfg.longitude,
    )


def rollout_config(spec: RolloutSpec) -> RolloutConfig:
    """The declaration that reproduces ``spec`` (to redo a scored rollout exactly)."""
    return RolloutConfig(
        mode=spec.mode,
        state=tuple(f"{a}={b}" for a, b in spec.pairs),
        increment=spec.increment,
        static=tuple(spec.static),
        output_slice=spec.output_slice,
        channel_axis=spec.channel_axis,
        forcing=tuple(f.text() for f in spec.forcings),
        latitude=spec.latitude,
        longitude=spec.longitude,
    )


def resolve(
    model: Path | str | Model | None,
    project: Project | None,
    *,
    contexts: Path | str | None = None,
    variables: list[str] | tuple[str, ...] | None = None,
    k: int | None = None,
    span: str | None = None,
    spinup: bool = False,
    spinup_scale: float | None = None,
    seed: int = 0,
    rollout: RolloutConfig | dict[str, Any] | None = None,
    pick: str | None = None,
    include: tuple[str, ...] | None = None,
    exclude: tuple[str, ...] | None = None,
    fill: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Inputs:
    """Load the model, work out the rollout and cut the contexts.

    Args:
        model: an .onnx path or a loaded `Model` (default: the project's model).
        project: the project file, if any.
        contexts: a contexts file (default: the project's; none at all: spin up from noise).
        spinup_scale: standard deviation of the spin-up noise (default 1); only with a spin-up.
        rollout: declared rollout settings; they beat the project's ``[rollout]``.
        pick: how contexts are spread over the record: ``even`` (default: the project's, else even) or
            ``random`` (seeded by ``seed``).
        include, exclude: weight rules (`edgetqs.core.weights`); None: the project's ``[score]`` ones (a loaded
            `Model` keeps its own).
        fill: how to fill NaN/Inf in the contexts (`edgetqs.core.missing`; default: the project's
            ``fill``, else refuse them).
        log: told when values were filled (the note is also kept in ``notes``).

    Raises:
        BadInputError: no model given and no project file, bad counts or scales; plus whatever loading raises.
    """
    if spinup_scale is not None and not (math.isfinite(spinup_scale) and 0 < spinup_scale <= MAX_SPINUP_SCALE):
        raise BadInputError(f"spin-up scale {spinup_scale}; expected a positive, finite standard deviation up to {MAX_SPINUP_SCALE:g}")
    method = check_fill(fill if fill is not None else (project.fill if project else None))
    fraction = parse_span(span)
    proj = project
    inc = tuple(include if include is not None else (proj.score.include or ()) if proj else ())
    exc = tuple(exclude if exclude is not None else (proj.score.exclude or ()) if proj else ())
    if isinstance(model, Model):  # a loaded model keeps its rules unless others are given
        m = model if include is None and exclude is None else model.select(inc, exc)
    else:
        path = Path(model) if model is not None else (proj.model if proj else None)
        if path is None:
            raise BadInputError("no model given: pass MODEL (an .onnx file) or run in a folder with an edgetqs.toml (see `edgetqs init`)")
        m = load_model(path, include=inc, exclude=exc)
        if proj and proj.name and model is None:
            m.name = proj.name
    cfg = merged(proj.rollout if proj else RolloutConfig(), rollout)
    spec = infer_spec(m, spec_hints(cfg))
    kk = k if k is not None else (proj.k if proj and proj.k is not None else 8)
    if not 1 <= kk <= MAX_CONTEXTS:
        raise BadInputError(f"number of contexts k={kk}; expected 1 to {MAX_CONTEXTS:,}")
    vars_ = list(variables) if variables else (list(proj.variables) if proj and proj.variables else None)
    if vars_ is not None:
        check_variables(vars_)
    cpath = Path(contexts) if contexts is not None else (proj.contexts if proj and not spinup else None)
    notes: list[str] = []
    if spec.mode == "window" and spec.window_form != "steps":
        notes.append(f"rollout: {describe_spec(m, spec)}")
    how = pick or (proj.pick if proj and proj.pick else "even")
    if cpath is None:
        if spec.static:
            raise BadInputError(f"static inputs {list(spec.static)} need values from a contexts .npz; spin-up cannot invent them")
        if vars_:
            raise BadInputError(f"variables {vars_} name the columns of a contexts file, but none is given (spin-up from noise)")
        scale = 1.0 if spinup_scale is None else spinup_scale
        ctx = spinup_contexts(m, spec, kk, seed=seed, scale=scale, statics={})
        notes.append(f"contexts: data-free spin-up from noise (seed {seed}, scale {scale}); no contexts file was given")
    else:
        if spinup_scale is not None:
            raise BadInputError(f"--spinup-scale {spinup_scale} is for a spin-up from noise, but contexts '{cpath}' are given; drop one")
        rec = read_record(cpath, spec, vars_, fill=method)
        ctx = select_contexts(rec, m, spec, kk, fraction, how, seed)
        if vars_ and not ctx.variables:
            ctx = dataclasses.replace(ctx, variables=tuple(vars_))
        notes.append(ctx.note)
        if rec.filled:
            notes.append(f"contexts: {rec.filled:,} NaN/Inf value(s) in '{cpath}' filled ({method})")
            if log:
                log(notes[-1])
    return Inputs(m, spec, ctx, tuple(notes))


def check_variables(names: list[str] | tuple[str, ...]) -> None:
    """Variable names: non-empty, no duplicates.

    Raises:
        BadInputError: an empty name or a name given twice.
    """
    if not names or any(not str(v).strip() for v in names):
        raise BadInputError(f"variables {list(names)}; expected non-empty names, e.g. t2m,psl")
    dup = sorted({v for v in names if list(names).count(v) > 1})
    if dup:
        raise BadInputError(f"variables {dup} are given more than once; name each variable once")
