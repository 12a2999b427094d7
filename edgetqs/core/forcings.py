"""Forcing inputs: model inputs read per step that are not fed back (time of day, day of year, solar
geometry, prescribed fields).

A `Forcing` says where one model input's values come from, as a list of sources whose features are
concatenated on the input's last axis:

- ``column:NAME[,NAME...]``: arrays of the record taken at each step (CSV columns, NetCDF variables, or arrays
  named NAME in a contexts ``.npz``; first axis time);
- ``hour_of_day``: (sin, cos) of 2 pi hour / 24, from the record's timestamps (hour 6 gives (1, 0));
- ``day_of_year``: (sin, cos) of 2 pi (day - 1 + fraction of the day) / 365.2425;
- ``solar_elevation``: the clear-sky solar elevation in degrees at the site's latitude and longitude
  (`solar_elevation`; naive timestamps are UTC).

``align`` says which rows of the record a step reads: ``input`` (the rows of the state or window the model
is given: a window model's forcing is then [B, L, F], aligned with its window) or ``predicted`` (the rows
the call predicts: [B, H, F] for a window model, the next row for a state model). The text form, used by
``--forcing`` and ``[rollout] forcing`` in edgetqs.toml, is ``INPUT=SOURCE[+SOURCE...][@predicted]``, e.g.
``tod=hour_of_day+day_of_year`` or ``ghi=column:ghi@predicted``.

Timestamps past the end of the record continue at the record's own (regular) step, so time features cover
any horizon; a column does not, and a rollout that runs past the record's end is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..errors import ContextsError, RolloutSpecError
from .results import Frozen

SourceKind = Literal["column", "hour_of_day", "day_of_year", "solar_elevation"]
TIME_SOURCES = ("hour_of_day", "day_of_year", "solar_elevation")
Align = Literal["input", "predicted"]
_WIDTH = {"hour_of_day": 2, "day_of_year": 2, "solar_elevation": 1}
DAYS_PER_YEAR = 365.2425
_SYNTAX = "INPUT=SOURCE[+SOURCE...][@predicted], SOURCE one of hour_of_day, day_of_year, solar_elevation, column:NAME[,NAME...]"


class ForcingSource(Frozen):
    """One source of a forcing input's features.

    Attributes:
        kind: ``column`` (record arrays), ``hour_of_day``, ``day_of_year`` (sin, cos) or ``solar_elevation`` (degrees).
        columns: the record arrays a ``column`` source reads, in order.
    """

    kind: SourceKind
    columns: tuple[str, ...] = ()

    def text(self) -> str:
        return f"column:{','.join(self.columns)}" if self.kind == "column" else self.kind


class Forcing(Frozen):
    """One forcing input of the model: where its values come from at each step.

    Attributes:
        input: the model input.
        sources: its features, concatenated in this order on the input's last axis.
        align: ``input`` (the rows the model is given) or ``predicted`` (the rows it predicts).
    """

    input: str
    sources: tuple[ForcingSource, ...]
    align: Align = "input"

    def text(self) -> str:
        """The declaration as ``--forcing`` takes it (`parse_forcing` reads it back)."""
        return f"{self.input}={'+'.join(s.text() for s in self.sources)}" + ("@predicted" if self.align == "predicted" else "")

    @property
    def needs_times(self) -> bool:
        return any(s.kind in TIME_SOURCES for s in self.sources)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c for s in self.sources for c in s.columns)


def parse_forcing(text: str) -> Forcing:
    """Read ``INPUT=SOURCE[+SOURCE...][@predicted]`` (see the module's docstring).

    Raises:
        RolloutSpecError: a malformed declaration, naming what was expected.
    """
    raw = str(text).strip()
    if "=" not in raw:
        raise RolloutSpecError(f"forcing '{text}'; expected {_SYNTAX}, e.g. tod=hour_of_day")
    name, _, rest = raw.partition("=")
    name, rest = name.strip(), rest.strip()
    align: Align = "input"
    if "@" in rest:
        rest, _, how = rest.rpartition("@")
        if how.strip() not in ("input", "predicted"):
            raise RolloutSpecError(f"forcing '{text}' aligns '@{how.strip()}'; expected @input or @predicted")
        align = "predicted" if how.strip() == "predicted" else "input"
    if not name or not rest:
        raise RolloutSpecError(f"forcing '{text}'; expected {_SYNTAX}, e.g. tod=hour_of_day")
    sources = []
    for part in rest.split("+"):
        p = part.strip()
        if p in TIME_SOURCES:
            sources.append(ForcingSource(kind=p))
        elif p.startswith("column:"):
            cols = tuple(c.strip() for c in p[len("column:") :].split(","))
            if not cols or any(not c for c in cols):
                raise RolloutSpecError(f"forcing '{text}': '{p}' names no column; expected column:NAME[,NAME...]")
            sources.append(ForcingSource(kind="column", columns=cols))
        else:
            raise RolloutSpecError(f"forcing '{text}': source '{p}' is not one of hour_of_day, day_of_year, solar_elevation, column:NAME")
    return Forcing(input=name, sources=tuple(sources), align=align)


def check_site(latitude: float | None, longitude: float | None, forcings: tuple[Forcing, ...]) -> None:
    """A solar elevation needs a site; a site must be on the Earth.

    Raises:
        RolloutSpecError: a missing or impossible latitude/longitude.
    """
    if latitude is not None and not (np.isfinite(latitude) and -90 <= latitude <= 90):
        raise RolloutSpecError(f"latitude {latitude}; expected degrees north from -90 to 90")
    if longitude is not None and not (np.isfinite(longitude) and -180 <= longitude <= 180):
        raise RolloutSpecError(f"longitude {longitude}; expected degrees east from -180 to 180")
    solar = [f.input for f in forcings if any(s.kind == "solar_elevation" for s in f.sources)]
    if solar and (latitude is None or longitude is None):
        raise RolloutSpecError(
            f"forcing input(s) {solar} use solar_elevation, which needs the site: give --latitude and --longitude "
            "(or [rollout] latitude/longitude in edgetqs.toml), in degrees north and east"
        )


# ------------------------------------------------------------------ time features


def _seconds(times: np.ndarray) -> np.ndarray:
    return np.asarray(times, dtype="datetime64[s]").astype(np.int64).astype(np.float64)


def hour_of_day(times: np.ndarray) -> np.ndarray:
    """(sin, cos) of 2 pi hour / 24 for each timestamp: [..., 2] (hour 6: (1, 0); hour 0: (0, 1))."""
    h = np.mod(_seconds(times), 86400.0) / 3600.0
    a = 2 * np.pi * h / 24.0
    return np.stack([np.sin(a), np.cos(a)], axis=-1)


def day_of_year(times: np.ndarray) -> np.ndarray:
    """(sin, cos) of 2 pi (day of year - 1 + fraction of the day) / 365.2425: [..., 2] (1 January 00:00: (0, 1))."""
    t = np.asarray(times, dtype="datetime64[s]")
    start = t.astype("datetime64[Y]").astype("datetime64[s]")
    d = (t - start).astype(np.int64) / 86400.0
    a = 2 * np.pi * d / DAYS_PER_YEAR
    return np.stack([np.sin(a), np.cos(a)], axis=-1)


def solar_elevation(times: np.ndarray, latitude: float, longitude: float) -> np.ndarray:
    """Clear-sky solar elevation in degrees (no refraction) at UTC ``times``, latitude and longitude in degrees.

    The NOAA solar calculator's formulas (after Meeus, Astronomical Algorithms): the Sun's apparent longitude
    and the obliquity of the ecliptic give its declination, the equation of time and the longitude give the true
    solar time and the hour angle. Within 0.05 degrees of pvlib's SPA elevation between 1950 and 2050
    (tests/core/test_forcings.py checks 0.5).
    """
    jd = _seconds(times) / 86400.0 + 2440587.5
    tc = (jd - 2451545.0) / 36525.0  # Julian centuries since J2000
    rad = np.deg2rad
    l0 = np.mod(280.46646 + tc * (36000.76983 + tc * 0.0003032), 360.0)
    m = 357.52911 + tc * (35999.05029 - 0.0001537 * tc)
    e = 0.016708634 - tc * (0.000042037 + 0.0000001267 * tc)
    c = (
        np.sin(rad(m)) * (1.914602 - tc * (0.004817 + 0.000014 * tc))
        + np.sin(rad(2 * m)) * (0.019993 - 0.000101 * tc)
        + np.sin(rad(3 * m)) * 0.000289
    )
    omega = 125.04 - 1934.136 * tc
    app_long = l0 + c - 0.00569 - 0.00478 * np.sin(rad(omega))
    eps0 = 23.0 + (26.0 + (21.448 - tc * (46.815 + tc * (0.00059 - tc * 0.001813))) / 60.0) / 60.0
    eps = eps0 + 0.00256 * np.cos(rad(omega))
    decl = np.arcsin(np.sin(rad(eps)) * np.sin(rad(app_long)))
    y = np.tan(rad(eps) / 2) ** 2
    eot = 4 * np.rad2deg(
        y * np.sin(2 * rad(l0))
        - 2 * e * np.sin(rad(m))
        + 4 * e * y * np.sin(rad(m)) * np.cos(2 * rad(l0))
        - 0.5 * y * y * np.sin(4 * rad(l0))
        - 1.25 * e * e * np.sin(2 * rad(m))
    )  # minutes
    minutes = np.mod(_seconds(times), 86400.0) / 60.0
    tst = np.mod(minutes + eot + 4.0 * longitude, 1440.0)
    ha = rad(tst / 4.0 - 180.0)
    lat = rad(latitude)
    cos_z = np.sin(lat) * np.sin(decl) + np.cos(lat) * np.cos(decl) * np.cos(ha)
    return 90.0 - np.rad2deg(np.arccos(np.clip(cos_z, -1.0, 1.0)))


def parse_times(values: np.ndarray, where: str) -> np.ndarray:
    """Timestamps from a record (datetime64, or ISO 8601 text) as naive UTC datetime64[s].

    Raises:
        ContextsError: values that are not timestamps.
    """
    a = np.asarray(values)
    try:
        if a.dtype.kind == "M":
            return a.astype("datetime64[s]")
        if a.dtype.kind in "US":
            import pandas as pd

            t = pd.to_datetime(pd.Series(a.astype(str)), utc=True)
            return t.dt.tz_localize(None).to_numpy().astype("datetime64[s]")
    except (ValueError, TypeError, OverflowError) as exc:
        raise ContextsError(
            f"timestamps in {where} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); expected ISO 8601 dates"
        ) from None
    raise ContextsError(f"timestamps in {where} have dtype {a.dtype}; expected datetime64 or ISO 8601 text such as 2024-01-31T06:00")


# ------------------------------------------------------------------ values along a record


@dataclass(frozen=True)
class ForcingData:
    """What a record offers its forcings: timestamps [N] (None: the record has none) and named arrays [N, ...]."""

    n: int
    times: np.ndarray | None = None
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""

    def time_at(self, rows: np.ndarray) -> np.ndarray:
        """The timestamps of ``rows`` (any shape), continuing at the record's step past its end.

        Raises:
            ContextsError: the record has no timestamps, or rows past its end and an irregular step.
        """
        if self.times is None:
            raise ContextsError(
                f"'{self.source}' has no timestamps, which time features (hour_of_day, day_of_year, solar_elevation) need: "
                "add a 'time' column (CSV), a 'time' array of datetime64 or ISO 8601 text (.npz), or a time coordinate (NetCDF)"
            )
        t = self.times.astype(np.int64)
        rows = np.asarray(rows)
        if rows.size and int(rows.max()) >= self.n:
            steps = np.diff(t)
            if self.n < 2 or steps.min() != steps.max() or steps[0] <= 0:
                raise ContextsError(
                    f"the rollout runs past the end of '{self.source}' and its timestamps are not evenly spaced, so the time "
                    "features of those steps are unknown: draw the contexts from earlier in the record (--span 0:0.9) or use a shorter horizon"
                )
            step = int(steps[0])
            out = np.where(rows < self.n, t[np.minimum(rows, self.n - 1)], t[-1] + (rows - (self.n - 1)) * step)
        else:
            out = t[rows]
        return out.astype("datetime64[s]")

    def sha256(self) -> str:
        h = hashlib.sha256()
        if self.times is not None:
            h.update(self.times.astype("datetime64[s]").astype(np.int64).tobytes())
        for k in sorted(self.columns):
            v = np.ascontiguousarray(self.columns[k])
            h.update(k.encode() + str(v.shape).encode() + str(v.dtype).encode() + v.tobytes())
        return h.hexdigest()


def source_values(
    src: ForcingSource, data: ForcingData, rows: np.ndarray, latitude: float | None, longitude: float | None, horizon_note: str = ""
) -> np.ndarray:
    """One source's features at record ``rows`` (any shape): [*rows.shape, F].

    Raises:
        ContextsError: a column the record lacks, or rows past its end.
    """
    if src.kind == "hour_of_day":
        return hour_of_day(data.time_at(rows))
    if src.kind == "day_of_year":
        return day_of_year(data.time_at(rows))
    if src.kind == "solar_elevation":
        assert latitude is not None and longitude is not None  # check_site refused it earlier
        return solar_elevation(data.time_at(rows), latitude, longitude)[..., None]
    parts = []
    for c in src.columns:
        if c not in data.columns:
            raise ContextsError(
                f"forcing column '{c}' is not in '{data.source}' (it has {sorted(data.columns) or 'no arrays besides the state'}); "
                "name a CSV column, a NetCDF variable or an array of the .npz (time first)"
            )
        a = data.columns[c]
        if rows.size and int(rows.max()) >= data.n:
            raise ContextsError(
                f"forcing column '{c}' of '{data.source}' ends at row {data.n - 1}, but the rollout reads row {int(rows.max())}{horizon_note}: "
                "draw the contexts from earlier in the record (--span 0:0.9) or use a shorter horizon"
            )
        v = a[rows]
        parts.append(v.reshape(*rows.shape, -1))
    return np.concatenate(parts, axis=-1)


@dataclass(frozen=True)
class Forcer:
    """The forcing values of K contexts drawn from a record, for any horizon.

    Attributes:
        forcings: the declarations.
        data: the record's timestamps and arrays.
        starts: per context, the record row its state (or window) starts at.
        window: window mode: (L, H) the window and the steps a call predicts; None: state mode.
        shapes: per forcing input, the model's input shape without the batch axis (None: symbolic).
    """

    forcings: tuple[Forcing, ...]
    data: ForcingData
    starts: tuple[int, ...]
    window: tuple[int, int] | None
    shapes: dict[str, tuple[int | None, ...]]
    latitude: float | None = None
    longitude: float | None = None

    def rows(self, f: Forcing, horizon: int) -> np.ndarray:
        """Record rows each call reads, [K, T] (state) or [K, T, L or H] (window)."""
        s = np.asarray(self.starts, dtype=np.int64)[:, None]
        t = np.arange(horizon, dtype=np.int64)[None, :]
        if self.window is None:
            return s + t + (1 if f.align == "predicted" else 0)
        length, h = self.window
        first = s + t * h + (length if f.align == "predicted" else 0)
        span = h if f.align == "predicted" else length
        return first[..., None] + np.arange(span, dtype=np.int64)

    def arrays(self, horizon: int) -> dict[str, np.ndarray]:
        """Per forcing input, its values [K, T, *input shape] as float32.

        Raises:
            ContextsError: missing timestamps or columns, rows past the record's end, or values that do not
                have the input's shape.
        """
        out = {}
        for f in self.forcings:
            rows = self.rows(f, horizon)
            note = f" (a horizon of {horizon} steps)"
            v = np.concatenate([source_values(s, self.data, rows, self.latitude, self.longitude, note) for s in f.sources], axis=-1)
            want = self.shapes[f.input]
            fits = _fit(v, want, rows.shape)
            if fits is None:
                per = list(v.shape[2:])
                raise ContextsError(
                    f"forcing '{f.text()}' gives {per} per step and context ({v.shape[-1]} feature(s)"
                    + (f" at {v.shape[2]} rows: align {f.align}" if v.ndim == 4 else "")
                    + f"), but input '{f.input}' takes [B, {', '.join('?' if d is None else str(d) for d in want)}]; "
                    "declare sources whose features add up to its last axis"
                    + (", or align with the other end (@predicted / @input)" if self.window else "")
                )
            if not np.isfinite(fits).all():
                raise ContextsError(
                    f"forcing '{f.text()}' holds NaN or Inf values in '{self.data.source}'; forcings are used as they are: fix the data"
                )
            out[f.input] = fits
        return out

    def subset(self, rows: slice) -> Forcer:
        return Forcer(self.forcings, self.data, self.starts[rows], self.window, self.shapes, self.latitude, self.longitude)

    def sha256(self) -> str:
        h = hashlib.sha256(self.data.sha256().encode())
        h.update(repr((tuple(f.text() for f in self.forcings), self.starts, self.window, self.latitude, self.longitude)).encode())
        return h.hexdigest()


def _fit(v: np.ndarray, want: tuple[int | None, ...], lead: tuple[int, ...]) -> np.ndarray | None:
    """``v`` [K, T, (rows,) F] reshaped to [K, T, *want], or None when it does not fit."""
    k, t = lead[0], lead[1]
    per = v.shape[2:]
    cands = [per]
    if per and per[-1] == 1:
        cands.append(per[:-1])  # one feature of a [B] (state) or [B, L] (window) input
    for shape in cands:
        if len(shape) == len(want) and all(w is None or w == d for d, w in zip(shape, want)):
            return np.ascontiguousarray(v.reshape(k, t, *shape), dtype=np.float32)
    return None


__all__ = [
    "DAYS_PER_YEAR",
    "TIME_SOURCES",
    "Forcer",
    "Forcing",
    "ForcingData",
    "ForcingSource",
    "check_site",
    "day_of_year",
    "hour_of_day",
    "parse_forcing",
    "parse_times",
    "solar_elevation",
]
