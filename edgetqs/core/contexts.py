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

import numpy as np

from ..errors import BadInputError, ContextsError
from .files import input_file
from .metrics import channel_axis, channel_mean, channel_spread
from .missing import FILLS, check_fill, describe_nonfinite, fill_nonfinite
from .model import Model
from .results import Frozen
from .rollout import Rollout, RolloutSpec

TIME_NAMES = ("time", "timestep", "t", "date", "datetime", "valid_time", "step")


@dataclass(frozen=True)
class Record:
    """Data along time, per state input: arrays [N, *sample] (window mode: [N, C])."""

    arrays: dict[str, np.ndarray]
    variables: tuple[str, ...]
    statics: dict[str, np.ndarray]
    source: str
    premade: bool = False  # arrays already are contexts [K, *sample], not a record
    filled: int = 0  # non-finite values filled on request (`edgetqs.core.missing`)


class ContextsInfo(Frozen):
    """Where the contexts of a result came from (stored in scores.json, plan.json, convert.json, check.json)."""

    source: str
    k: int
    start_indices: tuple[int, ...]
    variables: tuple[str, ...]
    shape: tuple[int, ...]


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
    try:
        if suffix == ".npy":
            arrays = {names[0]: np.load(p, allow_pickle=False)}
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            if "variables" in data:
                var_names = tuple(str(v) for v in np.atleast_1d(data.pop("variables")))
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
            df = df[[c for c in df.columns if str(c).lower() not in TIME_NAMES]].select_dtypes("number")
            if variables:
                _check_vars(variables, [str(c) for c in df.columns], p)
                df = df[variables]
            if df.shape[1] == 0:
                raise BadInputError(f"'{p}' has no numeric columns; expected one column per variable, one row per time step")
            var_names = tuple(str(c) for c in df.columns)
            arrays = {names[0]: df.to_numpy(dtype=np.float32)}
        elif suffix in (".nc", ".nc4", ".cdf", ".netcdf", ".h5"):
            grid, var_names = _read_netcdf(p, variables)
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
                raise ContextsError(
                    f"{why}; a rollout cannot start from them: fix the data, or fill them with --fill "
                    f"{'|'.join(FILLS)} (`fill = ...` in edgetqs.toml)"
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
    return Record(record, var_names, statics, str(p), premade, filled)


def _check_vars(wanted: list[str], have: list[str], p: Path) -> None:
    missing = [v for v in wanted if v not in have]
    if missing:
        raise BadInputError(f"variables {missing} are not in '{p}'; it has {have}")


def _read_netcdf(p: Path, variables: list[str] | None) -> tuple[np.ndarray, tuple[str, ...]]:
    import xarray as xr

    with xr.open_dataset(p) as ds:
        cands = [str(v) for v in ds.data_vars if ds[v].ndim >= 1 and np.issubdtype(ds[v].dtype, np.number)]
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
                raise BadInputError(
                    f"variable '{v}' in '{p}' has dims {da.dims}, unlike '{cands[0]}' {first.dims}; choose variables with --variables"
                )
            stack.append(da.transpose(tdim, ...).values.astype(np.float32))
    arr = np.stack(stack, axis=1)  # [N, C, *spatial]; masked points are NaN: `read_record` refuses or fills them
    return arr, tuple(str(v) for v in cands)


def more_contexts(contexts: Contexts, model: Model, spec: RolloutSpec, k: int) -> Contexts:
    """Up to ``k`` contexts from the same record and span (a search that measures plans needs more contexts
    than a sweep to not overfit); the given ones when there is no record or no room for more."""
    if contexts.record is None or contexts.record.premade or contexts.k >= k or any(i < 0 for i in contexts.indices):
        return contexts
    for n in (k, (k + contexts.k) // 2):
        try:
            return select_contexts(contexts.record, model, spec, n, contexts.span)
        except ContextsError:
            continue
    return contexts


def _sample_shape(model: Model, name: str) -> tuple[int | None, ...]:
    info = next(i for i in model.inputs if i.name == name)
    return info.shape[1:]


def select_contexts(record: Record, model: Model, spec: RolloutSpec, k: int, span: tuple[float, float] = (0.0, 1.0)) -> Contexts:
    """Cut K initial states spread evenly over the record (or a fraction ``span`` of it).

    Args:
        record: what `read_record` returned.
        k: number of contexts.
        span: fraction of the record to draw from, e.g. (0, 0.5) and (0.5, 1) for two disjoint sets.

    Raises:
        ContextsError: shape mismatch with the model's inputs, or K larger than the record allows.
    """
    if k <= 0:
        raise ContextsError(f"number of contexts K={k}; expected at least 1")
    arrays: list[np.ndarray] = []
    indices: tuple[int, ...] = ()
    for name, _ in spec.pairs:
        data = record.arrays[name]
        want = _sample_shape(model, name)
        if record.premade:
            if not _fits(data.shape[1:], want):
                raise ContextsError(
                    f"contexts in '{record.source}' have shape {list(data.shape)}; model input '{name}' needs [K, {_fmt(want)}]"
                )
            if k > data.shape[0]:
                raise ContextsError(
                    f"K={k} contexts asked for but '{record.source}' holds {data.shape[0]}; use -k {data.shape[0]} or fewer"
                )
            arrays.append(data[:k])
            indices = tuple([-1] * k)
            continue
        if spec.mode == "window":
            length = want[0]
            if data.ndim != 2 or not _fits(data.shape[1:], want[1:]) or length is None:
                raise ContextsError(
                    f"record in '{record.source}' has shape {list(data.shape)}; window input '{name}' [B, {_fmt(want)}] needs a record [N, {_fmt(want[1:])}] (time first)"
                )
        else:
            length = 1
            if not _fits(data.shape[1:], want):
                raise ContextsError(
                    f"record in '{record.source}' has shape {list(data.shape)}; state input '{name}' [B, {_fmt(want)}] needs a record [N, {_fmt(want)}] (time first)"
                )
        n = data.shape[0]
        lo = int(np.floor(span[0] * n))
        hi = int(np.floor(span[1] * n))
        last = hi - length  # last valid start
        room = last - lo + 1
        if room < k:
            raise ContextsError(
                f"K={k} contexts do not fit: '{record.source}' rows {lo}..{hi - 1} ({hi - lo} time steps) give at most "
                f"{max(room, 0)} distinct windows of length {length}; use -k {max(room, 1)} or a longer record"
            )
        starts = np.unique(np.round(np.linspace(lo, last, k)).astype(int))
        if len(starts) < k:
            starts = np.arange(lo, lo + k)
        indices = tuple(int(s) for s in starts)
        if spec.mode == "window":
            arrays.append(np.stack([data[s : s + length] for s in starts]))
        else:
            arrays.append(data[starts])
    statics = dict(record.statics)
    spreads, means = _stats([record.arrays[name] for name, _ in spec.pairs], spec)
    return Contexts(arrays, statics, record.variables, record.source, indices, record, spreads, means, span)


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
    rng = np.random.default_rng(seed)
    init = []
    for name, _ in spec.pairs:
        shape = _sample_shape(model, name)
        if any(d is None for d in shape):
            raise ContextsError(f"input '{name}' has symbolic dims [{_fmt(shape)}]; spin-up needs fixed sizes: give --contexts")
        init.append((scale * rng.standard_normal((1, *(int(d or 1) for d in shape)))).astype(np.float32))
    roll = Rollout(model, spec, statics=statics)
    total = burn_in + k * spacing
    res = roll.run(init, total)
    if res.first_nonfinite is not None:
        raise ContextsError(
            f"spin-up from noise left the finite numbers at step {res.first_nonfinite}; give real --contexts or a smaller --spinup-scale"
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
