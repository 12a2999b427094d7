"""Initial states (contexts) for rollouts: read a record along time, cut K windows from it.

A contexts file is a record whose first axis is time: ``.npy``/``.npz`` arrays, CSV (columns are
variables, rows are time) or NetCDF through xarray (variables along a time dimension). For a state
model each time step is a candidate initial state; for a window model each run of L steps is. K
of them are taken evenly spread over the record, so the choice is deterministic.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import BadInputError, ContextsError, Hint
from .files import input_file
from .forcings import Forcer, ForcingData, parse_times
from .metrics import channel_axis, channel_mean, channel_spread
from .missing import FILLS, check_fill, describe_nonfinite, fill_nonfinite, workable_fill
from .model import Model
from .results import Frozen
from .rollout import Rollout, RolloutSpec, sample_shape

TIME_NAMES = ("time", "timestep", "t", "date", "datetime", "valid_time", "step")


@dataclass(frozen=True)
class Record:
    """Data along time, per state input: arrays [N, *sample] (window mode: [N, C])."""

    arrays: dict[str, np.ndarray]
    variables: tuple[str, ...]
    statics: dict[str, np.ndarray]
    source: str
    premade: bool = False  # arrays already are contexts [K, *sample], not a record
    file_shapes: dict[str, tuple[int, ...]] | None = None  # each array's shape in the file (before a univariate axis was added)
    filled: int = 0  # non-finite values filled on request (`edgetqs.core.missing`)
    forcing: ForcingData | None = None  # timestamps and the arrays forcings read (a spec with forcings)


class ContextsInfo(Frozen):
    """Where the contexts of a result came from (stored in scores.json, plan.json, convert.json, check.json).

    Attributes:
        start_indices: per context, the record row it starts at (-1: a stack of windows or spun up).
        shape: one context as the rollout holds it (a window model's: [L, C], a univariate one's [L, 1]).
        windows: per context, its row in a stack of windows (empty: drawn from a record).
        pick: how the rows were chosen: ``even`` (evenly spaced) or ``random`` (seeded by ``seed``).
        span: the fraction of the record (or stack) they were drawn from.
    """

    source: str
    k: int
    start_indices: tuple[int, ...]
    variables: tuple[str, ...]
    shape: tuple[int, ...]
    windows: tuple[int, ...] = ()
    pick: Literal["even", "random"] = "even"
    seed: int | None = None
    span: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class Contexts:
    """K initial states ready for a rollout, where they came from, and the spread that normalises errors.

    ``spreads`` holds, per pair, each variable's standard deviation over the data the contexts were drawn
    from (the whole record; premade or spun-up contexts: the contexts themselves): the one normaliser of
    every metric (`edgetqs.core.metrics`). ``means`` are the same data's per-variable means (ACC's climatology).
    """

    arrays: list[np.ndarray]  # per pair, [K, *input sample]
    statics: dict[str, np.ndarray]
    variables: tuple[str, ...]
    source: str
    indices: tuple[int, ...]  # time index where each context starts in the record (-1: premade)
    record: Record | None = None
    spreads: tuple[np.ndarray, ...] = ()
    means: tuple[np.ndarray, ...] = ()
    span: tuple[float, float] = (0.0, 1.0)  # the fraction of the record they were drawn from
    windows: tuple[int, ...] = ()  # row of each context in a stack of windows
    pick: str = "even"
    seed: int = 0
    note: str = ""  # how they were read and chosen, for the command's output
    forcer: Forcer | None = None  # the forcing inputs' values along the record (a spec with forcings)

    def forcing_arrays(self, horizon: int) -> dict[str, np.ndarray]:
        """Per forcing input, its values [K, horizon, ...] for these contexts (empty: the rollout has none).

        Raises:
            ContextsError: missing timestamps or columns, or a horizon past the record's end for a column.
        """
        return self.forcer.arrays(horizon) if self.forcer is not None else {}

    @property
    def k(self) -> int:
        return int(self.arrays[0].shape[0])

    def info(self) -> ContextsInfo:
        return ContextsInfo(
            source=self.source,
            k=self.k,
            start_indices=tuple(self.indices),
            variables=tuple(self.variables),
            shape=tuple(int(d) for d in self.arrays[0].shape[1:]),
            windows=tuple(self.windows),
            pick="random" if self.pick == "random" else "even",
            seed=self.seed if self.pick == "random" else None,
            span=self.span,
        )

    def describe(self) -> dict:
        return self.info().model_dump(mode="json")

    def sha256(self) -> str:
        """Hash of what a score depends on besides the model: the arrays a rollout starts from (contexts and
        static inputs) and the spreads that normalise its errors (they come from the whole record, so two records
        sharing the selected rows, or a record before and after a fill, score differently): the score cache key."""
        h = hashlib.sha256()
        for a in (*self.arrays, *(np.asarray(s, np.float64) for s in self.spreads)):
            h.update(str(a.shape).encode() + str(a.dtype).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        for k in sorted(self.statics):
            v = np.ascontiguousarray(self.statics[k])
            h.update(k.encode() + str(v.shape).encode() + str(v.dtype).encode())
            h.update(v.tobytes())
        if self.forcer is not None:
            h.update(self.forcer.sha256().encode())
        return h.hexdigest()


def _stats(data: list[np.ndarray], spec: RolloutSpec) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    return (
        tuple(channel_spread(d, spec.mode, spec.channel_axis) for d in data),
        tuple(channel_mean(d, spec.mode, spec.channel_axis) for d in data),
    )


def read_record(path: str | Path, spec: RolloutSpec, variables: list[str] | None = None, fill: str | None = None) -> Record:
    """Read a contexts file into a `Record` keyed by the spec's state inputs.

    Every reader ends in the same checks: numbers only, at least one time step, variable names that
    match the variables' axis, and no NaN or Inf unless ``fill`` says how to fill them
    (`edgetqs.core.missing`).

    Args:
        path: a ``.npy``, ``.npz``, ``.csv`` or NetCDF file (time first).
        spec: the rollout (which inputs the arrays are for, where the variables' axis is).
        variables: variables to read (CSV columns, NetCDF variables) or the names of the variables' axis.
        fill: ``ffill``, ``interpolate`` or ``mean`` to fill non-finite values; None refuses them.

    Raises:
        BadInputError: missing or unreadable file, unknown variables, unsupported format, empty arrays.
        ContextsError: non-finite values (count and first location) without ``fill``, or ones it cannot fill.
    """
    method = check_fill(fill)
    p = input_file(path, "contexts file", "give a .npy, .npz, .csv or .nc file")
    suffix = p.suffix.lower()
    names = spec.state_inputs
    statics: dict[str, np.ndarray] = {}
    var_names: tuple[str, ...] = ()
    premade = False
    wanted = {c for f in spec.forcings for c in f.columns}
    need_times = any(f.needs_times for f in spec.forcings)
    raw_times: np.ndarray | None = None
    columns: dict[str, np.ndarray] = {}
    try:
        if suffix == ".npy":
            arrays = {names[0]: np.load(p, allow_pickle=False)}
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            if "variables" in data:
                var_names = tuple(str(v) for v in np.atleast_1d(data.pop("variables")))
            if spec.forcings:  # timestamps and the arrays forcings read are not state
                tkey = next((k for k in data if k.lower() in TIME_NAMES and k not in names), None)
                raw_times = data.pop(tkey) if tkey else None
                columns = {k: data.pop(k) for k in list(data) if k in wanted and k not in names}
            statics = {k: data.pop(k) for k in list(data) if k in spec.static}
            if "contexts" in data:
                arrays, premade = {names[0]: data["contexts"]}, True
            elif all(n in data for n in names):
                arrays = {n: data[n] for n in names}
            elif "record" in data:
                arrays = {names[0]: data["record"]}
            elif len(data) == 1:
                arrays = {names[0]: next(iter(data.values()))}
            else:
                raise BadInputError(
                    f"'{p}' holds arrays {sorted(data)}; expected one array, or one named 'record' (time first), "
                    f"'contexts' ([K, ...]) or after each state input {names}"
                )
        elif suffix in (".csv", ".txt"):
            import pandas as pd

            df = pd.read_csv(p)
            tcol = next((c for c in df.columns if str(c).lower() in TIME_NAMES), None)
            if need_times and tcol is not None:
                raw_times = df[tcol].to_numpy().astype(str)
            columns = {str(c): df[c].to_numpy(dtype=np.float32) for c in df.columns if str(c) in wanted}
            df = df[[c for c in df.columns if str(c).lower() not in TIME_NAMES and str(c) not in wanted]].select_dtypes("number")
            if variables:
                _check_vars(variables, [str(c) for c in df.columns], p)
                df = df[variables]
            if df.shape[1] == 0:
                raise BadInputError(f"'{p}' has no numeric columns; expected one column per variable, one row per time step")
            var_names = tuple(str(c) for c in df.columns)
            arrays = {names[0]: df.to_numpy(dtype=np.float32)}
        elif suffix in (".nc", ".nc4", ".cdf", ".netcdf", ".h5"):
            grid, var_names, raw_times, columns = _read_netcdf(p, variables, wanted)
            arrays = {names[0]: grid}
        else:
            raise BadInputError(f"contexts file '{p}' has suffix '{suffix}'; expected .npy, .npz, .csv or .nc")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BadInputError(f"cannot read contexts file '{p}' ({type(exc).__name__}): {str(exc)[:300]}") from None
    for k, a in [*arrays.items(), *statics.items()]:
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise BadInputError(f"contexts array '{k}' in '{p}' has dtype {a.dtype}; expected real numbers")
        if k in arrays and (a.ndim == 0 or a.shape[0] == 0 or a.size == 0):
            raise BadInputError(
                f"contexts array '{k}' in '{p}' is empty (shape {list(a.shape)}); expected a record with at least one time step"
            )
    file_shapes = {k: tuple(int(d) for d in a.shape) for k, a in arrays.items()}
    if spec.mode == "window" and spec.window_form.startswith("univariate") and suffix in (".npy", ".npz"):
        # one variable: a record [N] is [N, 1], a stack of windows [N, L] is [N, L, 1] as the rollout holds them
        arrays = {k: a[:, None] if a.ndim == 1 else (a[..., None] if a.ndim == 2 and a.shape[1] != 1 else a) for k, a in arrays.items()}
    record = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
    statics = {k: np.asarray(v) for k, v in statics.items()}
    names_given = tuple(variables) if variables and not var_names else ()
    var_names = var_names or names_given
    first = record[names[0]]
    ax = channel_axis(spec.mode, spec.channel_axis, first.ndim) if first.ndim > 1 else None
    if var_names and ax is not None and 0 < ax < first.ndim and first.shape[ax] != len(var_names):
        src = "--variables" if names_given else f"the variable names in '{p}'"
        raise BadInputError(
            f"{src} give {len(var_names)} names {list(var_names)[:8]}, but the contexts have {first.shape[ax]} variables "
            f"(axis {ax} of shape {list(first.shape)}); give one name per variable"
        )
    filled = 0
    for k, a in record.items():
        what = f"contexts '{p}'" + (f" ('{k}')" if len(record) > 1 else "")
        if method is None:
            why = describe_nonfinite(a, what, first_axis="context" if premade else "time step", variables=var_names, var_axis=ax)
            if why:
                # advise the fill that fills all of them (premade contexts have no time axis: mean), or none
                how = workable_fill(a, ax if ax is not None else a.ndim - 1, has_time=not premade)
                raise ContextsError(
                    f"{why}; a rollout cannot start from them"
                    + ("" if how else ", and some variable has no finite value at all: fix the data"),
                    hint=None
                    if how is None
                    else Hint(
                        "contexts-fill",
                        ("--fill", how),
                        say=f"fix the data, or fill them, e.g. {{args}} (--fill {'|'.join(FILLS)})",
                        project=(("fill", how),),
                    ),
                )
            continue
        kax = channel_axis(spec.mode, spec.channel_axis, a.ndim) if a.ndim > 1 else 0
        kax = kax if 0 <= kax < a.ndim else a.ndim - 1  # a record of the wrong shape is refused by `select_contexts`
        record[k], n = fill_nonfinite(a, method, what, var_axis=kax, variables=var_names, has_time=not premade)
        filled += n
    for k, a in statics.items():
        why = describe_nonfinite(np.asarray(a), f"static input '{k}' in '{p}'", first_axis="element")
        if why:
            raise ContextsError(f"{why}; static inputs are used as they are (no fill): fix the file")
    forcing = None
    if spec.forcings:
        n = first.shape[0]
        times = parse_times(raw_times, f"'{p}'") if need_times and raw_times is not None else None
        for k, a in [*columns.items(), *([("time", times)] if times is not None else [])]:
            if a.shape[0] != n:
                raise BadInputError(f"array '{k}' in '{p}' has {a.shape[0]} rows along time, the record {n}; expected one per time step")
        for k, a in columns.items():
            if a.dtype.kind not in "fiu":
                raise BadInputError(f"forcing column '{k}' in '{p}' has dtype {a.dtype}; expected real numbers")
        forcing = ForcingData(n, times, {k: np.asarray(v, np.float32) for k, v in columns.items()}, str(p))
    return Record(record, var_names, statics, str(p), premade, file_shapes=file_shapes, filled=filled, forcing=forcing)


def _check_vars(wanted: list[str], have: list[str], p: Path) -> None:
    missing = [v for v in wanted if v not in have]
    if missing:
        raise BadInputError(f"variables {missing} are not in '{p}'; it has {have}")


def _read_netcdf(
    p: Path, variables: list[str] | None, wanted: set[str] | None = None
) -> tuple[np.ndarray, tuple[str, ...], np.ndarray | None, dict[str, np.ndarray]]:
    """The variables stacked [N, C, ...], their names, the time coordinate (if any) and the forcing arrays ``wanted``."""
    import xarray as xr

    wanted = wanted or set()
    with xr.open_dataset(p) as ds:
        cands = [str(v) for v in ds.data_vars if ds[v].ndim >= 1 and np.issubdtype(ds[v].dtype, np.number) and str(v) not in wanted]
        if variables:
            _check_vars(variables, cands, p)
            cands = list(variables)
        if not cands:
            raise BadInputError(f"'{p}' has no numeric variables with a time dimension")
        first = ds[cands[0]]
        tdim = next((d for d in first.dims if str(d).lower() in TIME_NAMES), first.dims[0])
        stack = []
        for v in cands:
            da = ds[v]
            if da.dims != first.dims:
                alike = [c for c in cands if ds[c].dims == first.dims]
                raise BadInputError(
                    f"variable '{v}' in '{p}' has dims {da.dims}, unlike '{cands[0]}' {first.dims}",
                    hint=Hint(
                        "contexts-variables",
                        ("--variables", ",".join(alike)),
                        say="choose variables that share their dims with {args}",
                        project=(("variables", alike),),
                    ),
                )
            stack.append(da.transpose(tdim, ...).values.astype(np.float32))
        times = ds[tdim].values if tdim in ds.coords and ds[tdim].dtype.kind == "M" else None
        columns = {c: ds[c].transpose(tdim, ...).values for c in wanted if c in ds.data_vars and tdim in ds[c].dims}
    arr = np.stack(stack, axis=1)  # [N, C, *spatial]; masked points are NaN: `read_record` refuses or fills them
    return arr, tuple(str(v) for v in cands), times, columns


def more_contexts(contexts: Contexts, model: Model, spec: RolloutSpec, k: int) -> Contexts:
    """Up to ``k`` contexts from the same record and span (a search that measures plans needs more contexts
    than a sweep to not overfit), or from the same stack of windows; the given ones when there is no record
    or no room for more."""
    if contexts.record is None or contexts.k >= k or (any(i < 0 for i in contexts.indices) and not contexts.windows):
        return contexts
    for n in (k, (k + contexts.k) // 2):
        try:
            return select_contexts(contexts.record, model, spec, n, contexts.span, contexts.pick, contexts.seed)
        except ContextsError:
            continue
    return contexts


def _sample_shape(model: Model, spec: RolloutSpec, name: str) -> tuple[int | None, ...]:
    info = next(i for i in model.inputs if i.name == name)
    return sample_shape(spec, info.shape)


Pick = Literal["even", "random"]
PICKS: tuple[str, ...] = ("even", "random")


def _is_stack(record: Record, spec: RolloutSpec, data: np.ndarray, want: tuple[int | None, ...]) -> bool:
    """Whether ``data`` is a stack of contexts [K, *sample] rather than a record along time. A window model
    decides by rank: its record is [N, C] (time first), its windows are [N, L, C]."""
    if record.premade:
        return True
    return spec.mode == "window" and data.ndim == len(want) + 1 and _fits(data.shape[1:], want)


def _spread_rows(lo: int, last: int, k: int, pick: str, seed: int) -> np.ndarray:
    """K distinct rows in lo..last: evenly spaced, or drawn at random (seeded), in order."""
    if pick == "random":
        rng = np.random.default_rng([seed, 11])
        return np.sort(rng.choice(np.arange(lo, last + 1), size=k, replace=False))
    starts = np.unique(np.round(np.linspace(lo, last, k)).astype(int))
    return starts if len(starts) == k else np.arange(lo, lo + k)


def _rows_text(rows: tuple[int, ...]) -> str:
    shown = ", ".join(str(r) for r in rows[:12])
    return shown + (f", ... ({len(rows)} in all)" if len(rows) > 12 else "")


def select_contexts(
    record: Record,
    model: Model,
    spec: RolloutSpec,
    k: int,
    span: tuple[float, float] = (0.0, 1.0),
    pick: str = "even",
    seed: int = 0,
) -> Contexts:
    """Cut K initial states spread over the record (or a fraction ``span`` of it).

    A window model's contexts file may also be a stack of windows [N, L, C] (a univariate model's: [N, L]),
    told from a record [N, C] by the model's window; the K windows are then spread over the stack the
    same way. Which rows were used is kept (`ContextsInfo`: ``start_indices`` in a record, ``windows``
    in a stack).

    Args:
        record: what `read_record` returned.
        k: number of contexts.
        span: fraction of the record (or stack) to draw from, e.g. (0, 0.5) and (0.5, 1) for two disjoint sets.
        pick: ``even`` (evenly spaced, the default) or ``random`` (drawn without replacement, seeded).
        seed: seeds ``random``.

    Raises:
        ContextsError: shape mismatch with the model's inputs, or K larger than the record allows.
    """
    if k <= 0:
        raise ContextsError(f"number of contexts K={k}; expected at least 1")
    if pick not in PICKS:
        raise ContextsError(f"context pick '{pick}'; expected one of {', '.join(PICKS)}")
    arrays: list[np.ndarray] = []
    indices: tuple[int, ...] = ()
    windows: tuple[int, ...] = ()
    how = "evenly spaced" if pick == "even" else f"at random (seed {seed})"
    within = "" if span == (0.0, 1.0) else f" within span {span[0]:g}:{span[1]:g}"
    note = ""
    for name, _ in spec.pairs:
        data = record.arrays[name]
        want = _sample_shape(model, spec, name)
        n = data.shape[0]
        lo, hi = int(np.floor(span[0] * n)), int(np.floor(span[1] * n))
        if _is_stack(record, spec, data, want):
            if not _fits(data.shape[1:], want):
                raise ContextsError(
                    f"contexts in '{record.source}' have shape {list(data.shape)}; model input '{name}' needs [K, {_fmt(want)}]"
                )
            if k > hi - lo:
                part = f"rows {lo}..{hi - 1} of " if (lo, hi) != (0, n) else ""
                raise ContextsError(
                    f"K={k} contexts asked for but {part}'{record.source}' holds {hi - lo}",
                    hint=Hint("contexts-k-stack", ("-k", str(max(hi - lo, 1))), say="use {args} or fewer"),
                )
            rows = _spread_rows(lo, hi - 1, k, pick, seed)
            arrays.append(data[rows])
            indices, windows = tuple([-1] * k), tuple(int(r) for r in rows)
            if not record.premade:
                uni = spec.window_form.startswith("univariate")
                shape = list((record.file_shapes or {}).get(name, data.shape))
                kind = f"the model's window [{_fmt(want[:1] if uni else want)}]" + (
                    f" (a time-first record would be [N{'' if uni else ', ' + _fmt(want[1:])}])" if spec.mode == "window" else ""
                )
                note = f"contexts: '{record.source}' {shape} read as {n} windows of {kind}; "
            else:
                note = f"contexts: '{record.source}' holds {n} premade contexts; "
            note += f"{k} of them {how}{within}: rows {_rows_text(windows)}"
            continue
        if spec.mode == "window":
            length = want[0]
            if data.ndim != 2 or not _fits(data.shape[1:], want[1:]) or length is None:
                raise ContextsError(
                    f"record in '{record.source}' has shape {list(data.shape)}; window input '{name}' [B, {_fmt(want)}] needs a record "
                    f"[N, {_fmt(want[1:])}] (time first) or a stack of windows [N, {_fmt(want)}]"
                )
        else:
            length = 1
            if not _fits(data.shape[1:], want):
                raise ContextsError(
                    f"record in '{record.source}' has shape {list(data.shape)}; state input '{name}' [B, {_fmt(want)}] needs a record [N, {_fmt(want)}] (time first)"
                )
        last = hi - length  # last valid start
        room = last - lo + 1
        if room < k:
            raise ContextsError(
                f"K={k} contexts do not fit: '{record.source}' rows {lo}..{hi - 1} ({hi - lo} time steps) give at most "
                f"{max(room, 0)} distinct windows of length {length}",
                hint=Hint("contexts-k-record", ("-k", str(max(room, 1))), say="use {args} or a longer record"),
            )
        starts = _spread_rows(lo, last, k, pick, seed)
        indices = tuple(int(s) for s in starts)
        if spec.mode == "window":
            arrays.append(np.stack([data[s : s + length] for s in starts]))
        else:
            arrays.append(data[starts])
        unit = f"windows of {length} steps" if spec.mode == "window" else "states"
        note = f"contexts: {k} {unit} {how} over '{record.source}' ({n} time steps{within}): starting at rows {_rows_text(indices)}"
    statics = dict(record.statics)
    spreads, means = _stats([record.arrays[name] for name, _ in spec.pairs], spec)
    forcer = _forcer(record, model, spec, indices) if spec.forcings else None
    return Contexts(
        arrays, statics, record.variables, record.source, indices, record, spreads, means, span, windows, pick, seed, note, forcer
    )


def _forcer(record: Record, model: Model, spec: RolloutSpec, starts: tuple[int, ...]) -> Forcer:
    """The forcing values of contexts starting at record rows ``starts``.

    Raises:
        ContextsError: contexts that are not drawn from a record along time (a stack of windows), or a window
            model whose window or steps per call are symbolic.
    """
    from .rollout import steps_per_call

    names = [f.input for f in spec.forcings]
    if record.forcing is None or not starts or any(s < 0 for s in starts):
        raise ContextsError(
            f"forcing input(s) {names} are read from the record along time, but '{record.source}' gives premade contexts or a stack "
            "of windows; give a record (time first) with its timestamps and arrays"
        )
    window = None
    if spec.mode == "window":
        length = _sample_shape(model, spec, spec.pairs[0][0])[0]
        h = steps_per_call(model, spec)
        if length is None or h is None:
            raise ContextsError(
                f"forcing input(s) {names}: the model's window or steps per call are symbolic; export it with fixed L and H"
            )
        window = (int(length), int(h))
    shapes = {f.input: next(tuple(i.shape[1:]) for i in model.inputs if i.name == f.input) for f in spec.forcings}
    forcer = Forcer(spec.forcings, record.forcing, tuple(starts), window, shapes, spec.latitude, spec.longitude)
    forcer.arrays(1)  # a missing column, timestamps or a shape that does not fit: said now, not mid-sweep
    return forcer


def _fits(have: tuple[int, ...], want: tuple[int | None, ...]) -> bool:
    return len(have) == len(want) and all(w is None or h == w for h, w in zip(have, want))


def _fmt(shape: tuple[int | None, ...]) -> str:
    return ", ".join("?" if d is None else str(d) for d in shape)


def spinup_contexts(
    model: Model,
    spec: RolloutSpec,
    k: int,
    seed: int = 0,
    scale: float = 1.0,
    burn_in: int = 200,
    spacing: int = 10,
    statics: dict[str, np.ndarray] | None = None,
) -> Contexts:
    """Data-free contexts: start from noise, run the model on itself, take states from its trajectory.

    Raises:
        ContextsError: symbolic input shapes (no size to draw noise for) or a spin-up that leaves the finite numbers.
    """
    if spec.forcings:
        raise ContextsError(
            f"forcing input(s) {[f.input for f in spec.forcings]} are read from a record along time; a spin-up from noise has "
            "none: give --contexts (a record with its timestamps and arrays)"
        )
    rng = np.random.default_rng(seed)
    init = []
    for name, _ in spec.pairs:
        shape = _sample_shape(model, spec, name)
        if any(d is None for d in shape):
            raise ContextsError(f"input '{name}' has symbolic dims [{_fmt(shape)}]; spin-up needs fixed sizes: give --contexts")
        init.append((scale * rng.standard_normal((1, *(int(d or 1) for d in shape)))).astype(np.float32))
    roll = Rollout(model, spec, statics=statics)
    total = burn_in + k * spacing
    res = roll.run(init, total)
    if res.first_nonfinite is not None:
        raise ContextsError(
            f"spin-up from noise left the finite numbers at step {res.first_nonfinite}",
            hint=Hint(
                "spinup-scale",
                ("--spinup-scale", f"{scale / 10:g}"),
                say="give real --contexts, or use {args}",
                otherwise="give real --contexts",
            ),
        )
    arrays = []
    picks = [burn_in + i * spacing - 1 for i in range(1, k + 1)]
    for j in range(len(spec.pairs)):
        traj = res.steps[j][:, 0]  # [T, ...]
        if spec.mode == "window":
            flat = np.concatenate([init[j][0], traj.reshape(-1, traj.shape[-1])])  # all steps in order
            length = init[j].shape[1]
            h = traj.shape[1]
            arrays.append(np.stack([flat[(p + 1) * h + length - length : (p + 1) * h + length] for p in picks]))
        else:
            arrays.append(traj[picks])
    spreads, means = _stats(arrays, spec)
    return Contexts(
        arrays,
        dict(statics or {}),
        (),
        f"spin-up from noise (seed {seed}, scale {scale}, burn-in {burn_in})",
        tuple(picks),
        None,
        spreads,
        means,
    )
