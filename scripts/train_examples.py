"""Train the bundled example forecasters with fixed seeds and ship them as package data.

    python scripts/train_examples.py [--only lorenz96,station,blizzard,patchtst,seaice,station-tod] [--out edgetqs/examples]
    python scripts/train_examples.py --only station-tod-doy --out DIR   # hour and day of year forcing, not shipped

Each example lands in edgetqs/examples/NAME/ as model.onnx (torch dynamo export, dynamic batch),
contexts.npz (the shipped record, time first, with variable names and any static input), edgetqs.toml
and a model card (card.md + card.json). The card declares the record's splits as fractions
(``train`` / ``score`` / ``heldout``, pairwise disjoint): training reads only ``train`` (or, for
Lorenz-96, another trajectory that is not shipped), and the skill against persistence is measured on
contexts drawn from ``heldout`` whose whole horizon of truth lies inside it.
Needs the `examples` extra (torch, pvlib) and Debian's libncarg-data for the gridded fields.
About ten minutes for the first five on 2 idle CPU cores (see each card's train_seconds); station-tod took 14 min
wall on the shared machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[1]
NCARG = Path("/usr/share/ncarg/data/cdf")
SKILL_K = 32  # held-out contexts the card's skill is measured on (fewer only where the split has no room)


# ------------------------------------------------------------------ data


def lorenz96(n_steps: int, n: int = 40, forcing: float = 8.0, dt: float = 0.05, seed: int = 0) -> np.ndarray:
    """Lorenz-96 integrated with RK4 (10 substeps per output step), after a 1000-step spin-up."""
    rng = np.random.default_rng(seed)
    x = forcing + 0.01 * rng.standard_normal(n)

    def f(x: np.ndarray) -> np.ndarray:
        return (np.roll(x, -1) - np.roll(x, 2)) * np.roll(x, 1) - x + forcing

    h = dt / 10
    out = np.empty((n_steps, n))
    for i in range(1000 + n_steps):
        for _ in range(10):
            k1 = f(x)
            k2 = f(x + h / 2 * k1)
            k3 = f(x + h / 2 * k2)
            k4 = f(x + h * k3)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        if i >= 1000:
            out[i - 1000] = x
    return out.astype(np.float32)


def station_weather() -> tuple[np.ndarray, list[str], str]:
    import pvlib

    path = os.path.join(os.path.dirname(pvlib.__file__), "data", "723170TYA.CSV")
    df, meta = pvlib.iotools.read_tmy3(path, map_variables=True)
    cols = ["temp_air", "temp_dew", "relative_humidity", "pressure", "wind_speed", "ghi"]
    name = str(meta.get("Name", "Greensboro")).strip('"')
    return df[cols].to_numpy(np.float32), cols, f"TMY3 station {meta.get('USAF', 723170)} ({name}, {meta.get('State', 'NC')})"


def station_times() -> np.ndarray:
    """The TMY3 record's hourly timestamps as naive UTC datetime64[s] (the typical year coerced to 2001; the file's clock is UTC-5)."""
    import pvlib

    path = os.path.join(os.path.dirname(pvlib.__file__), "data", "723170TYA.CSV")
    df, _ = pvlib.iotools.read_tmy3(path, map_variables=True, coerce_year=2001)
    return df.index.tz_convert("UTC").tz_localize(None).values.astype("datetime64[s]")


def blizzard() -> tuple[np.ndarray, np.ndarray, list[str]]:
    import xarray as xr

    names = [
        ("Pstorm.cdf", "p", "psl"),
        ("Tstorm.cdf", "t", "t2m"),
        ("Ustorm.cdf", "u", "u10"),
        ("Vstorm.cdf", "v", "v10"),
        ("U500storm.cdf", "u", "u500"),
        ("V500storm.cdf", "v", "v500"),
    ]
    fields = []
    for f, v, _ in names:
        with xr.open_dataset(NCARG / f) as ds:
            fields.append(ds[v].values.astype(np.float32))
    x = np.stack(fields, axis=1)  # [64, 6, 33, 36]
    # sea-level pressure masks the same 224 points at every step: that is the static mask; the
    # masked points of T and V move from step to step, so fill each field with its own mean
    valid = np.isfinite(x[:, 0]).all(axis=0)
    # a few fields are missing whole (t2m at step 17, v10 at 17 and 37, v500 at 36): interpolate in time
    for t, c in zip(*np.nonzero(np.isnan(x).all(axis=(2, 3)))):
        x[t, c] = 0.5 * (x[t - 1, c] + x[t + 1, c])
    for t in range(x.shape[0]):
        for c in range(x.shape[1]):
            f = x[t, c]
            f[~np.isfinite(f)] = np.nanmean(f)
    return x, valid.astype(np.float32)[None], [n for _, _, n in names]


# the same six variables at three climates (TMY3 Alaska and North Carolina, TMY2 Florida)
TMY_VARS = ["temp_air", "temp_dew", "relative_humidity", "pressure", "wind_speed", "ghi"]
TMY2_COLS = {
    "temp_air": ("DryBulb", 0.1),
    "temp_dew": ("DewPoint", 0.1),
    "relative_humidity": ("RHum", 1.0),
    "pressure": ("Pressure", 1.0),
    "wind_speed": ("Wspd", 0.1),
    "ghi": ("GHI", 1.0),
}


def tmy_stations() -> tuple[np.ndarray, list[str], str]:
    """Three pvlib stations side by side: record [8760, 17] hourly, variables 'station:variable'.

    TMY files hold one typical year from Jan 1 to Dec 31 in local standard time, so row i is the same
    hour of the year at every station; channel-independent models treat each column as its own series.
    """
    import pvlib

    d = Path(pvlib.__file__).parent / "data"
    cols, names = [], []
    for f, tag in (("703165TY.csv", "sandpoint"), ("723170TYA.CSV", "greensboro")):
        df, _ = pvlib.iotools.read_tmy3(str(d / f), map_variables=True)
        cols += [df[v].to_numpy(np.float64) for v in TMY_VARS]
        names += [f"{tag}:{v}" for v in TMY_VARS]
    df, _ = pvlib.iotools.read_tmy2(str(d / "12839.tm2"))  # TMY2 stores tenths of degC and m/s
    cols += [df[c].to_numpy(np.float64) * scale for c, scale in TMY2_COLS.values()]
    names += [f"miami:{v}" for v in TMY_VARS]
    where = "pvlib TMY3 703165TY.csv (Sand Point AK), TMY3 723170TYA.CSV (Greensboro NC), TMY2 12839.tm2 (Miami FL)"
    # Sand Point's pressure is one constant value all year (missing in the source): no series to forecast
    keep = [i for i, c in enumerate(cols) if np.std(c) > 0]
    return np.stack([cols[i] for i in keep], axis=1).astype(np.float32), [names[i] for i in keep], where


def sea_ice() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Monthly sea-ice concentration [120, 1, 49, 100] (both polar caps), an ocean mask [1, 49, 100], latitudes.

    fice.nc (NCAR Graphics example data) is ten years of a coupled ocean/sea-ice model spin-up on a grid of
    49 latitudes (77.4S-35.7S and 35.7N-90N: the two caps stacked) by 100 longitudes. It has no missing
    values (land reads 0), so the validity mask comes from landsea.nc (1-degree land/sea) at the nearest point.
    """
    import xarray as xr

    with xr.open_dataset(NCARG / "fice.nc", decode_times=False) as ds:
        x = ds["fice"].values.astype(np.float32)[:, None]
        lat, lon = ds["hlat"].values, ds["hlon"].values
    with xr.open_dataset(NCARG / "landsea.nc") as ds:
        lsm = ds["LSMASK"].values  # 0 ocean, 1 land, 2 lake, 3 small island, 4 ice shelf; rows from 89.5S
    i = np.clip(np.round(lat + 89.5).astype(int), 0, 179)
    j = np.floor(lon).astype(int) % 360
    ocean = (lsm[np.ix_(i, j)] == 0).astype(np.float32)[None]
    return x, ocean, lat


# ------------------------------------------------------------------ models


class L96Net(nn.Module):
    """Periodic 1-D conv net predicting the increment of a Lorenz-96 state [B, 40]."""

    def __init__(self, hidden: int = 48, mid: int = 5, mean: float = 0.0, std: float = 1.0, dstd: float = 1.0) -> None:
        super().__init__()
        self.inp = nn.Conv1d(1, hidden, 5)
        self.mid = nn.ModuleList(nn.Conv1d(hidden, hidden, 1) for _ in range(mid))
        self.out = nn.Conv1d(hidden, 1, 1)
        self.mean, self.std, self.dstd = mean, std, dstd  # python floats: scalars in the graph, not weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = ((x - self.mean) / self.std).unsqueeze(1)
        z = torch.cat([z[..., -2:], z, z[..., :2]], dim=-1)  # periodic padding, exports as Slice+Concat
        h = torch.tanh(self.inp(z))
        for m in self.mid:
            h = h + torch.tanh(m(h))
        return self.out(h).squeeze(1) * self.dstd


class StationNet(nn.Module):
    """MLP on a 24-hour window of 6 station variables, predicting the next 6 hours."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, length: int = 24, horizon: int = 6, hidden: int = 128) -> None:
        super().__init__()
        c = mean.shape[0]
        self.register_buffer("in_mean", torch.tensor(mean))
        self.register_buffer("in_std", torch.tensor(std))
        self.l1 = nn.Linear(length * c, hidden)
        self.l2 = nn.Linear(hidden, hidden)
        self.l3 = nn.Linear(hidden, hidden)
        self.l4 = nn.Linear(hidden, horizon * c)
        self.horizon, self.c = horizon, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = ((x - self.in_mean) / self.in_std).flatten(1)
        # ReLU, not GELU: TFLite-Micro has no GELU kernel, and this is the example that fits microcontrollers
        h = torch.relu(self.l1(z))
        h = h + torch.relu(self.l2(h))
        h = h + torch.relu(self.l3(h))
        last = z.reshape(-1, x.shape[1], self.c)[:, -1:, :]  # persistence + learned change: beats persistence at short leads
        y = last + self.l4(h).reshape(-1, self.horizon, self.c)
        return y * self.in_std + self.in_mean


class StationForcedNet(StationNet):
    """StationNet with a forcing input: time features of the 6 predicted hours [B, 6, F] ((sin, cos) of the hour of
    day, and of the day of year when F = 4: `edgetqs.core.forcings`), flattened beside the window into the first layer."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, length: int = 24, horizon: int = 6, hidden: int = 128, features: int = 4) -> None:
        super().__init__(mean, std, length, horizon, hidden)
        self.l1 = nn.Linear(length * mean.shape[0] + horizon * features, hidden)

    def forward(self, x: torch.Tensor, tod: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        z = ((x - self.in_mean) / self.in_std).flatten(1)
        h = torch.relu(self.l1(torch.cat([z, tod.flatten(1)], dim=1)))
        h = h + torch.relu(self.l2(h))
        h = h + torch.relu(self.l3(h))
        last = z.reshape(-1, x.shape[1], self.c)[:, -1:, :]
        y = last + self.l4(h).reshape(-1, self.horizon, self.c)
        return y * self.in_std + self.in_mean


class BlizzardNet(nn.Module):
    """Residual CNN on 6 surface/500 hPa fields (33x36), land-sea style mask as a static input."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, hidden: int = 32, depth: int = 3) -> None:
        super().__init__()
        c = mean.shape[0]
        self.register_buffer("norm_mean", torch.tensor(mean).reshape(1, c, 1, 1))
        self.register_buffer("norm_std", torch.tensor(std).reshape(1, c, 1, 1))
        self.inp = nn.Conv2d(c + 1, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv2d(hidden, hidden, 3, padding=1) for _ in range(depth))
        self.out = nn.Conv2d(hidden, c, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z = (x - self.norm_mean) / self.norm_std
        h = torch.nn.functional.gelu(self.inp(torch.cat([z, mask], dim=1)))
        for b in self.blocks:
            h = h + torch.nn.functional.gelu(b(h))
        dz = self.out(h) * 0.1
        return x + dz * self.norm_std


class AttentionBlock(nn.Module):
    """Pre-norm transformer block: separate q/k/v/o projections (as TimesFM stores them), GELU MLP.

    Tokens travel as a 2-D [N * T, d] matrix so every Linear exports as Gemm on its own named weight
    (on 3-D inputs the exporter folds a transposed copy of each weight into an anonymous constant).
    """

    def __init__(self, d: int, heads: int, ff: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm2 = nn.LayerNorm(d)
        self.ff1 = nn.Linear(d, ff)
        self.ff2 = nn.Linear(ff, d)
        self.heads = heads

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        d = x.shape[1]
        h, e = self.heads, d // self.heads
        z = self.norm1(x)
        q = self.q(z).reshape(-1, t, h, e).transpose(1, 2)
        k = self.k(z).reshape(-1, t, h, e).transpose(1, 2)
        v = self.v(z).reshape(-1, t, h, e).transpose(1, 2)
        # written out rather than scaled_dot_product_attention: plain MatMul/Softmax in the graph, which
        # every converter downstream (onnx2tf, ai-edge-quantizer) handles
        a = torch.softmax((q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(e)), dim=-1)
        x = x + self.o((a @ v).transpose(1, 2).reshape(-1, d))
        return x + self.ff2(torch.nn.functional.gelu(self.ff1(self.norm2(x))))


class PatchTST(nn.Module):
    """Channel-independent patch transformer with a quantile head (PatchTST / TimesFM in miniature).

    Each variable's window is normalised by its own mean and spread (RevIN without affine terms), cut
    into non-overlapping patches, embedded, passed through pre-norm attention blocks and mapped by a
    flatten head to ``horizon`` steps x quantiles. Input [B, L, C], output [B, H, C, Q].
    """

    def __init__(
        self,
        n_channels: int,
        length: int = 192,
        horizon: int = 24,
        patch: int = 16,
        d: int = 144,
        depth: int = 4,
        heads: int = 4,
        quantiles: tuple[float, ...] = (0.1, 0.5, 0.9),
    ) -> None:
        super().__init__()
        self.c, self.length, self.horizon, self.patch = n_channels, length, horizon, patch
        self.n_patches = length // patch
        self.quantiles = quantiles
        self.embed = nn.Linear(patch, d)
        self.pos = nn.Parameter(0.02 * torch.randn(1, self.n_patches, d))
        self.blocks = nn.ModuleList(AttentionBlock(d, heads, 4 * d) for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(self.n_patches * d, horizon * len(quantiles))

    def series(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Univariate windows [N, L] -> normalised quantiles [N, H, Q], window mean [N, 1], spread [N, 1]."""
        mu = s.mean(dim=1, keepdim=True)
        sd = torch.sqrt(((s - mu) ** 2).mean(dim=1, keepdim=True) + 1e-4)
        d = self.pos.shape[-1]
        h = (self.embed(((s - mu) / sd).reshape(-1, self.patch)).reshape(-1, self.n_patches, d) + self.pos).reshape(-1, d)
        for b in self.blocks:
            h = b(h, self.n_patches)
        zq = self.head(self.norm(h).reshape(-1, self.n_patches * d)).reshape(-1, self.horizon, len(self.quantiles))
        return zq, mu, sd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.transpose(1, 2).reshape(-1, self.length)  # every variable of every window is one series
        zq, mu, sd = self.series(s)
        y = zq * sd[:, :, None] + mu[:, :, None]
        return y.reshape(-1, self.c, self.horizon, len(self.quantiles)).transpose(1, 2)


def _wrap(x: torch.Tensor) -> torch.Tensor:
    """Periodic padding of one column in longitude (exports as Slice + Concat)."""
    return torch.cat([x[..., -1:], x, x[..., :1]], dim=-1)


class IceUNet(nn.Module):
    """Two-level U-Net stepping monthly sea-ice concentration; periodic in longitude, ocean mask as a static input.

    A 2x2 patch embedding takes the 49x100 grid (padded to 52x100) to 26x50; each level has residual
    3x3 convolutions + GELU; a transposed 2x2 convolution returns to the grid. The output is the next
    month's concentration, x + a scaled increment, clipped to [0, 1].
    """

    def __init__(self, mean: float, std: float, a: int = 64, b: int = 192) -> None:
        super().__init__()
        self.mean, self.std = mean, std  # python floats: scalars in the graph
        self.stem = nn.Conv2d(2, a, 2, stride=2)
        self.enc1 = nn.Conv2d(a, a, 3, padding=(1, 0))
        self.enc2 = nn.Conv2d(a, a, 3, padding=(1, 0))
        self.down = nn.Conv2d(a, b, 2, stride=2)
        self.mid1 = nn.Conv2d(b, b, 3, padding=(1, 0))
        self.mid2 = nn.Conv2d(b, b, 3, padding=(1, 0))
        self.up = nn.ConvTranspose2d(b, a, 2, stride=2)
        self.dec1 = nn.Conv2d(2 * a, a, 3, padding=(1, 0))
        self.dec2 = nn.Conv2d(a, a, 3, padding=(1, 0))
        self.out = nn.ConvTranspose2d(a, 1, 2, stride=2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        gelu = torch.nn.functional.gelu
        z = torch.nn.functional.pad(torch.cat([(x - self.mean) / self.std, mask], dim=1), (0, 0, 0, 3))  # 49 -> 52 rows
        h = gelu(self.stem(z))
        h = h + gelu(self.enc1(_wrap(h)))
        h = h + gelu(self.enc2(_wrap(h)))
        g = gelu(self.down(h))
        g = g + gelu(self.mid1(_wrap(g)))
        g = g + gelu(self.mid2(_wrap(g)))
        u = gelu(self.dec1(_wrap(torch.cat([h, self.up(g)], dim=1))))
        u = u + gelu(self.dec2(_wrap(u)))
        dz = self.out(u)[:, :, :49]
        return torch.clamp(x + 0.1 * self.std * dz, 0.0, 1.0)


# ------------------------------------------------------------------ splits, rollout and skill


def span_rows(span: tuple[float, float], n: int) -> tuple[int, int]:
    """Rows [lo, hi) of a record of n steps that a fraction span covers (the rule edgetqs' --span uses)."""
    return int(np.floor(span[0] * n)), int(np.floor(span[1] * n))


def room(span: tuple[float, float], n: int, length: int, per_call: int, horizon: int) -> int:
    """Distinct contexts in ``span`` whose window (``length`` rows) and truth for ``horizon`` calls all lie inside it."""
    lo, hi = span_rows(span, n)
    return max(hi - lo - length - horizon * per_call + 1, 0)


def context_starts(span: tuple[float, float], n: int, length: int, per_call: int, horizon: int, k: int) -> np.ndarray:
    """K starts spread evenly over the span, each with its horizon of truth inside it (edgetqs' selection rule)."""
    lo, hi = span_rows(span, n)
    last = hi - length - horizon * per_call
    if last - lo + 1 < k:
        raise ValueError(f"span {span} of a {n}-step record has room for {last - lo + 1} contexts with horizon {horizon}; asked for {k}")
    return np.unique(np.round(np.linspace(lo, last, k)).astype(int))


def check_splits(splits: dict[str, tuple[float, float]]) -> None:
    """Raise unless train/score/heldout are ordered fractions that do not overlap."""
    spans = sorted((tuple(v), k) for k, v in splits.items() if v[1] > v[0])
    for (a, ka), (b, kb) in itertools.pairwise(spans):
        if a[1] > b[0]:
            raise ValueError(f"splits {ka} {a} and {kb} {b} overlap")


def fit(model: nn.Module, loss_fn: Callable[[int], torch.Tensor], n_iter: int, lr: float, seed: int, weight_decay: float = 0.0) -> float:
    torch.manual_seed(seed)
    opt = (
        torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        if weight_decay
        else torch.optim.Adam(model.parameters(), lr=lr)
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, n_iter)
    loss = torch.tensor(0.0)
    for i in range(n_iter):
        opt.zero_grad()
        loss = loss_fn(i)
        loss.backward()
        opt.step()
        sched.step()
    return float(loss.detach())


def export(model: nn.Module, args: tuple, path: Path) -> None:
    from edgetqs.core.model import export_torch

    export_torch(model, args, path)


def rollout_np(
    onnx_path: Path,
    x0: np.ndarray,
    steps: int,
    feeds: dict | None = None,
    increment: bool = False,
    window: bool = False,
    out_index: tuple | None = None,
    per_call: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Roll the exported model out with onnxruntime (the skill figures are those of the shipped file).

    Args:
        per_call: inputs that change every call (forcings), each [steps, B, ...]: call t is fed ``v[t]``.

    Returns [steps, B, ...]: what each call produced (window mode: the H new rows of each call).
    """
    import onnxruntime as ort

    s = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    x, outs = x0, []
    for t in range(steps):
        y = s.run(None, {name: x, **(feeds or {}), **{k: v[t] for k, v in (per_call or {}).items()}})[0]
        if out_index is not None:
            y = y[out_index]
        if increment:
            y = x + y
        outs.append(y)
        x = np.concatenate([x[:, y.shape[1] :], y], axis=1) if window else y
    return np.stack(outs)


def record_spread(record: np.ndarray) -> np.ndarray:
    """Standard deviation of each variable (axis 1 of the record) over time and space: the skill's normaliser."""
    axes = tuple(i for i in range(record.ndim) if i != 1)
    return record.astype(np.float64).std(axis=axes)


def nrmse(pred: np.ndarray, truth: np.ndarray, spread: np.ndarray) -> float:
    """RMS error with each variable (axis 1) divided by its spread."""
    shape = [1] * pred.ndim
    shape[1] = -1
    return float(np.sqrt(np.mean(((pred.astype(np.float64) - truth) / spread.reshape(shape)) ** 2)))


def heldout_skill(
    path: Path,
    record: np.ndarray,
    span: tuple[float, float],
    *,
    length: int,
    per_call: int,
    horizon: int,
    leads: list[tuple[int, str]],
    k: int,
    static: dict[str, np.ndarray] | None = None,
    increment: bool = False,
    out_index: tuple | None = None,
    forcings: dict[str, np.ndarray] | None = None,
) -> list[dict]:
    """Normalised RMSE of the shipped ONNX and of persistence at each lead, on K contexts of the held-out split.

    Args:
        leads: (rows after the last context row, label) pairs, each within horizon * per_call.
        length: context rows (1: state mode).
        per_call: rows one model call predicts (1: state mode).
        forcings: per input, features of every record row [N, F], fed aligned with the rows each call predicts
            (edgetqs' ``@predicted``): [B, per_call, F] in window mode, [B, F] in state mode.
    """
    n = len(record)
    starts = context_starts(span, n, length, per_call, horizon, k)
    window = length > 1
    x0 = np.stack([record[s : s + length] for s in starts]) if window else record[starts]
    feeds = {name: np.repeat(v[None], len(starts), axis=0) for name, v in (static or {}).items()}
    first = starts + length  # first row each context's first call predicts
    calls = {
        name: np.stack([np.stack([f[r : r + per_call] if window else f[r] for r in first + t * per_call]) for t in range(horizon)])
        for name, f in (forcings or {}).items()
    }
    pred = rollout_np(path, x0, horizon, feeds=feeds, increment=increment, window=window, out_index=out_index, per_call=calls)
    if window:
        pred = pred.transpose(1, 0, 2, 3).reshape(len(starts), horizon * per_call, -1)  # [B, rows, C]
    spread = record_spread(record)
    last = starts + length - 1  # last observed row of each context
    rows = []
    for lead, label in leads:
        truth = record[last + lead]
        p = pred[:, lead - 1] if window else pred[lead - 1]
        rows.append({"lead": label, "lead_rows": lead, "model": nrmse(p, truth, spread), "persistence": nrmse(record[last], truth, spread)})
    return rows


def card_common(
    record: np.ndarray, splits: dict[str, tuple[float, float]], length: int, per_call: int, horizon: int, train_note: str | None = None
) -> dict:
    """Card fields about the record and its splits (the test re-derives each from contexts.npz)."""
    check_splits(splits)
    n = len(record)
    return {
        "splits": {k: list(v) for k, v in splits.items()},
        "split_rows": {k: list(span_rows(v, n)) for k, v in splits.items()},
        "record_steps": n,
        "context_length": length,
        "rows_per_call": per_call,
        "horizon": horizon,
        "room": {k: room(splits[k], n, length, per_call, horizon) for k in ("score", "heldout")},
        "train_data": train_note
        or f"rows {span_rows(splits['train'], n)[0]}-{span_rows(splits['train'], n)[1] - 1} of the shipped record (split 'train') only",
    }


def write_example(name: str, out: Path, toml: str, card: dict, arrays: dict) -> None:
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(d / "contexts.npz", **arrays)
    (d / "edgetqs.toml").write_text(toml)
    card["model_bytes"] = (d / "model.onnx").stat().st_size
    (d / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    render_card(d)


def render_card(d: Path) -> None:
    """Write card.md from card.json (``--render-cards`` redoes this without training)."""
    card = json.loads((d / "card.json").read_text())
    rows = card["split_rows"]
    splits = "; ".join(
        f"{k} {v[0]:g}-{v[1]:g} (rows {rows[k][0]}-{rows[k][1] - 1})" if v[1] > v[0] else f"{k}: none of the record"
        for k, v in card["splits"].items()
    )
    lines = [f"# {card['title']}", "", card["summary"], "", "| | |", "|---|---|"]
    for k in ("data", "architecture", "parameters", "rollout", "training", "contexts"):
        lines.append(f"| {k} | {card[k]} |")
    if card.get("forcing"):
        lines.append(f"| forcing | {', '.join(f'`{f}`' for f in card['forcing'])} (edgetqs.toml `[rollout] forcing`) |")
    lines.append(f"| splits | {splits}; training used {card['train_data']} |")
    lines.append(
        f"| room | {card['room']['score']} scoring and {card['room']['heldout']} held-out contexts with the whole "
        f"{card['horizon']}-call horizon of truth inside their split |"
    )
    lines.append(f"| model.onnx | {card['model_bytes']:,} bytes |")
    before = {r["lead"]: r for r in card.get("skill_before") or []}
    lines += [
        "",
        f"## Skill on the held-out split ({card['skill_k']} contexts spread evenly over it)",
        "",
        "Normalised RMSE: each variable divided by its standard deviation over the whole shipped record"
        + (", every grid point counted alike (no latitude weighting)" if card.get("grid") else "")
        + "; persistence repeats the last observed step.",
        "",
    ]
    unforced = {r["lead"]: r["model"] for r in card.get("skill_unforced") or []}
    head = "| lead | model | persistence |" + (" unforced station | change |" if unforced else "")
    head += " model before | persistence before |" if before else ""
    lines += [head, "|---" * (3 + 2 * bool(unforced) + 2 * bool(before)) + "|"]
    for row in card["skill"]:
        line = f"| {row['lead']} | {row['model']:.4f} | {row['persistence']:.4f} |"
        if unforced:
            u = unforced[row["lead"]]
            line += f" {u:.4f} | {(row['model'] - u) / u:+.1%} |"
        if before:
            b = before.get(row["lead"])
            line += f" {b['model']:.4f} | {b['persistence']:.4f} |" if b else " - | - |"
        lines.append(line)
    if card.get("skill_note"):
        lines += ["", card["skill_note"]]
    lines += [
        "",
        (
            f"Trained by `scripts/train_examples.py --only {card['name']}` with seed {card['seed']} in {card['train_seconds']:.0f} s "
            f"({card['train_cpu_seconds']:.0f} s of CPU time) on 2 CPU cores shared with other jobs, including data loading, export "
            "and the skill rollouts."
        ),
    ]
    (d / "card.md").write_text("\n".join(lines) + "\n")


def _report(name: str, n_params: int, final: float, skill: list[dict], t0: float) -> None:
    print(
        f"{name}: {n_params} params, loss {final:.4f}, skill {[(s['lead'], round(s['model'], 4), round(s['persistence'], 4)) for s in skill]}, "
        f"{time.time() - t0:.0f} s",
        flush=True,
    )


def _old_skill(out: Path, name: str) -> list[dict] | None:
    """The skill the previous card reported (kept beside the new figures when a retrain changes the split)."""
    p = out / name / "card.json"
    if not p.exists():
        return None
    old = json.loads(p.read_text())
    return old.get("skill_before") or (
        [{k: r[k] for k in ("lead", "model", "persistence")} for r in old["skill"]] if "splits" not in old else None
    )


# ------------------------------------------------------------------ the examples


def train_lorenz96(out: Path, seed: int = 0) -> None:
    t0, c0 = time.time(), time.process_time()
    before = _old_skill(out, "lorenz96")
    train = lorenz96(12000, seed=seed)
    record = lorenz96(2000, seed=seed + 1)  # shipped: another trajectory (other initial state), never trained on
    splits = {"train": (0.0, 0.0), "score": (0.0, 0.5), "heldout": (0.5, 1.0)}
    horizon = 20
    mean, std = float(train.mean()), float(train.std())
    d = train[1:] - train[:-1]
    dstd = float(d.std())
    torch.manual_seed(seed)
    model = L96Net(mean=mean, std=std, dstd=dstd)
    xt, yt = torch.tensor(train[:-1]), torch.tensor(d / dstd)
    gen = torch.Generator().manual_seed(seed)

    def loss(i: int) -> torch.Tensor:
        idx = torch.randint(0, len(xt), (256,), generator=gen)
        return ((model(xt[idx]) / dstd - yt[idx]) ** 2).mean()

    final = fit(model, loss, 3000, 3e-3, seed)
    path = out / "lorenz96" / "model.onnx"
    export(model.eval(), (torch.tensor(record[:2]),), path)
    common = card_common(record, splits, 1, 1, horizon, train_note=f"12,000 steps of a separate trajectory (seed {seed}; not shipped)")
    k = min(SKILL_K, common["room"]["heldout"])
    skill = heldout_skill(
        path,
        record,
        splits["heldout"],
        length=1,
        per_call=1,
        horizon=horizon,
        k=k,
        increment=True,
        leads=[(n, f"{n} steps ({n * 0.05:.2f} MTU)") for n in (1, 5, 10, 20)],
    )
    n_params = sum(p.numel() for p in model.parameters())
    card = {
        "title": "Lorenz-96 emulator (40 variables)",
        "name": "lorenz96",
        "mode": "state",
        "n_params": n_params,
        "seed": seed,
        "summary": "The classic weather proxy: a periodic 1-D convolutional net that predicts the 6-hour-equivalent increment of the 40-variable Lorenz-96 system (F=8).",
        "data": f"Lorenz-96, F=8, dt=0.05 (~6 h), RK4 with 10 substeps after a 1,000-step spin-up; trained on 12,000 steps of the trajectory from seed {seed}; "
        f"the shipped record is 2,000 steps of another trajectory (seed {seed + 1})",
        "architecture": "periodic Conv1d(1->48, k=5), 5 residual pointwise Conv1d(48->48) + tanh, Conv1d(48->1); input [B, 40], output increment [B, 40]",
        "parameters": f"{n_params:,}",
        "rollout": "state mode, increment (next = x + output)",
        "training": f"Adam 3e-3 cosine, 3,000 steps of 256, one-step MSE; final loss {final:.4f}",
        "contexts": "record [2000, 40] from a trajectory not trained on, variables x00..x39",
        **common,
        "skill_k": k,
        "skill": skill,
        "skill_before": before,
        "skill_note": "Before: the same recipe (weights within 1e-4) on 38 contexts of the continuation of its training trajectory.",
        "train_seconds": time.time() - t0,
        "train_cpu_seconds": time.process_time() - c0,
        "description": "Lorenz-96 (40 variables) state model, increment prediction",
    }
    toml = (
        'name = "lorenz96"\nmodel = "model.onnx"\ncontexts = "contexts.npz"\nk = 8\n\n[rollout]\nmode = "state"\nincrement = true\n\n'
        f"[score]\nhorizon = {horizon}\n"
    )
    write_example("lorenz96", out, toml, card, {"record": record, "variables": np.array([f"x{i:02d}" for i in range(40)])})
    _report("lorenz96", n_params, final, skill, t0)


STATION_SPLITS = {"train": (0.0, 0.6), "score": (0.6, 0.8), "heldout": (0.8, 1.0)}
STATION_LEADS = [(n, f"{n} h") for n in (1, 6, 24, 48)]


def write_station(
    name: str,
    out: Path,
    record: np.ndarray,
    cols: list[str],
    where: str,
    *,
    n_params: int,
    final: float,
    seed: int,
    horizon: int,
    t0: float,
    c0: float,
    before: list[dict] | None,
    forcing: tuple[str, str, np.ndarray, np.ndarray] | None = None,
) -> None:
    """Card, contexts and project file of a station example whose model.onnx is already in OUT/NAME (station and station-tod).

    Args:
        forcing: (input, sources, features of every record row [N, F], the record's timestamps): the model's forcing
            input, declared ``INPUT=SOURCES@predicted``. The card then also reports the unforced station's skill on the
            same held-out contexts (OUT/station/model.onnx when that run wrote one, else the shipped station).
    """
    L, H = 24, 6
    path = out / name / "model.onnx"
    common = card_common(record, STATION_SPLITS, L, H, horizon)
    k = min(SKILL_K, common["room"]["heldout"])

    def skill_of(model: Path, forcings: dict[str, np.ndarray] | None = None) -> list[dict]:
        return heldout_skill(
            model, record, STATION_SPLITS["heldout"], length=L, per_call=H, horizon=horizon, k=k, leads=STATION_LEADS, forcings=forcings
        )

    c = record.shape[1]
    arrays = {"record": record, "variables": np.array(cols)}
    toml_rollout, extra = "", {}
    title, summary_tail, data_tail, arch_in, inputs, rollout_tail, contexts_tail = "", "", "", f"{L * c}", f"input [B, {L}, {c}]", "", ""
    if forcing is None:
        skill = skill_of(path)
        note = "Before: trained on the first 80% of the year, measured on 70 contexts every 24 h of the last 20%."
    else:
        inp, sources, feats, times = forcing
        f = feats.shape[1]
        decl = f"{inp}={sources}@predicted"
        words = sources.replace("_", " ").replace("+", " and ")
        skill = skill_of(path, {inp: feats})
        plain = out / "station" / "model.onnx"
        plain = plain if plain.exists() else ROOT / "edgetqs" / "examples" / "station" / "model.onnx"
        extra = {
            "forcing": [decl],
            "skill_unforced": [{k: r[k] for k in ("lead", "model")} for r in skill_of(plain)],
        }
        arrays["time"] = times
        toml_rollout = f'[rollout]\nforcing = ["{decl}"]\n\n'
        title = f" with a forcing ({words})"
        summary_tail = (
            f" The forcing input `{inp}` is the (sin, cos) of the {words} (UTC) of each of the {H} hours the model predicts; "
            "edgetqs computes it from the record's timestamps at every call, as edgetqs.toml declares "
            f'(`[rollout] forcing = ["{decl}"]`), so it is never fed back.'
        )
        data_tail = "; hourly UTC timestamps (the typical year coerced to 2001, converted from the file's UTC-5 clock) as `time`"
        arch_in, inputs = f"{L * c}+{H * f}", f"inputs x [B, {L}, {c}], {inp} [B, {H}, {f}] (flattened beside the window)"
        rollout_tail = f"; forcing {decl}: the {words} of the {H} rows each call predicts"
        contexts_tail = " and UTC timestamps (time)"
        note = (
            "Unforced station: the shipped station example (same record, splits, recipe and seed, no forcing input) on the same "
            "held-out contexts."
        )
    card = {
        "title": f"Hourly station weather{title}, 24 h in -> 6 h out",
        "name": name,
        "mode": "window",
        "n_params": n_params,
        "seed": seed,
        "summary": f"A window MLP on six hourly variables from {where} (pvlib's bundled TMY3 file). Normalisation constants live in the graph as buffers, as in many frozen exports."
        + summary_tail,
        "data": f"pvlib TMY3 723170TYA.CSV, variables {', '.join(cols)}; the whole typical year is shipped (contexts.npz)" + data_tail,
        "architecture": f"normalise (buffers in_mean/in_std), Linear({arch_in}->128), 2 residual Linear(128->128) + ReLU, Linear(128->36) added to the last observed hour, de-normalise; {inputs}, output [B, 6, 6]",
        "parameters": f"{n_params:,} (+12 normalisation constants)",
        "rollout": "window mode: append the 6 predicted hours, drop the oldest 6" + rollout_tail,
        "training": f"Adam 1e-3 cosine, 2,500 steps of 256, 6-hour MSE in normalised units; final loss {final:.4f}",
        "contexts": f"record [{len(record)}, 6] (the whole year) with variable names" + contexts_tail,
        **common,
        "skill_k": k,
        "skill": skill,
        **extra,
        "skill_before": before,
        "skill_note": note,
        "train_seconds": time.time() - t0,
        "train_cpu_seconds": time.process_time() - c0,
        "description": f"hourly station weather (pvlib TMY3){title}, 24 h window -> 6 h",
    }
    toml = f'name = "{name}"\nmodel = "model.onnx"\ncontexts = "contexts.npz"\nk = 8\n\n{toml_rollout}[score]\nhorizon = {horizon}\n'
    write_example(name, out, toml, card, arrays)
    _report(name, n_params, final, skill, t0)


def train_station(out: Path, seed: int = 0) -> None:
    t0, c0 = time.time(), time.process_time()
    before = _old_skill(out, "station")
    record, cols, where = station_weather()
    L, H, horizon = 24, 6, 8
    _, n_train = span_rows(STATION_SPLITS["train"], len(record))
    train = record[:n_train]
    mean, std = train.mean(axis=0), train.std(axis=0)
    idx = np.arange(0, n_train - L - H + 1)  # every window with its target inside the training rows
    X = np.stack([train[i : i + L] for i in idx])
    Y = np.stack([train[i + L : i + L + H] for i in idx])
    torch.manual_seed(seed)
    model = StationNet(mean, std, L, H)
    xt, yt = torch.tensor(X), torch.tensor((Y - mean) / std)
    gen = torch.Generator().manual_seed(seed)
    m_t, s_t = torch.tensor(mean), torch.tensor(std)

    def loss(i: int) -> torch.Tensor:
        b = torch.randint(0, len(xt), (256,), generator=gen)
        return ((((model(xt[b]) - m_t) / s_t) - yt[b]) ** 2).mean()

    final = fit(model, loss, 2500, 1e-3, seed)
    export(model.eval(), (torch.tensor(record[None, :L]),), out / "station" / "model.onnx")
    n_params = sum(p.numel() for p in model.parameters())
    write_station(
        "station", out, record, cols, where, n_params=n_params, final=final, seed=seed, horizon=horizon, t0=t0, c0=c0, before=before
    )


def train_station_tod(out: Path, seed: int = 0, day: bool = False) -> None:
    """The station example with a forcing input: the hour of day (and with ``day`` the day of year) of the hours
    it predicts, as (sin, cos) each.

    Same record, splits, recipe and seed as `train_station`; written to OUT/station-tod (shipped, with a card that
    also reports the unforced station's skill on the same contexts) or OUT/station-tod-doy with ``day`` (trained on
    request only: the training rows never see October to December, so the day of year extrapolates)."""
    from edgetqs.core.forcings import day_of_year, hour_of_day

    t0, c0 = time.time(), time.process_time()
    name = "station-tod-doy" if day else "station-tod"
    sources = "hour_of_day+day_of_year" if day else "hour_of_day"
    record, cols, where = station_weather()
    times = station_times()
    feats = np.concatenate([hour_of_day(times), *([day_of_year(times)] if day else [])], axis=-1).astype(np.float32)  # [N, 2 or 4]
    L, H, horizon = 24, 6, 8
    _, n_train = span_rows(STATION_SPLITS["train"], len(record))
    train = record[:n_train]
    mean, std = train.mean(axis=0), train.std(axis=0)
    idx = np.arange(0, n_train - L - H + 1)
    X = np.stack([train[i : i + L] for i in idx])
    F = np.stack([feats[i + L : i + L + H] for i in idx])  # the predicted hours: align 'predicted'
    Y = np.stack([train[i + L : i + L + H] for i in idx])
    torch.manual_seed(seed)
    model = StationForcedNet(mean, std, L, H, features=feats.shape[1])
    xt, ft, yt = torch.tensor(X), torch.tensor(F), torch.tensor((Y - mean) / std)
    gen = torch.Generator().manual_seed(seed)
    m_t, s_t = torch.tensor(mean), torch.tensor(std)

    def loss(i: int) -> torch.Tensor:
        b = torch.randint(0, len(xt), (256,), generator=gen)
        return ((((model(xt[b], ft[b]) - m_t) / s_t) - yt[b]) ** 2).mean()

    final = fit(model, loss, 2500, 1e-3, seed)
    (out / name).mkdir(parents=True, exist_ok=True)
    # a batch of 2 as the example: the exported batch axis must stay dynamic (the card's skill runs 32 contexts at once)
    two = (torch.tensor(np.stack([record[:L], record[1 : L + 1]])), torch.tensor(np.stack([feats[L : L + H], feats[L + 1 : L + 1 + H]])))
    export(model.eval(), two, out / name / "model.onnx")
    n_params = sum(p.numel() for p in model.parameters())
    write_station(
        name,
        out,
        record,
        cols,
        where,
        n_params=n_params,
        final=final,
        seed=seed,
        horizon=horizon,
        t0=t0,
        c0=c0,
        before=None,
        forcing=("tod", sources, feats, times),
    )


def train_blizzard(out: Path, seed: int = 0) -> None:
    t0, c0 = time.time(), time.process_time()
    before = _old_skill(out, "blizzard")
    x, mask, names = blizzard()
    splits = {"train": (0.0, 0.5), "score": (0.5, 0.75), "heldout": (0.75, 1.0)}
    horizon = 4
    _, n_train = span_rows(splits["train"], len(x))
    train = x[:n_train]
    mean, std = train.mean(axis=(0, 2, 3)), train.std(axis=(0, 2, 3))
    torch.manual_seed(seed)
    model = BlizzardNet(mean, std)
    xt = torch.tensor(train[:-1])
    yt = torch.tensor(train[1:])
    mt = torch.tensor(np.repeat(mask[None], len(xt), axis=0))
    s_t = torch.tensor(std).reshape(1, -1, 1, 1)

    def loss(i: int) -> torch.Tensor:
        one = (((model(xt, mt) - yt) / s_t) ** 2).mean()
        two = (((model(model(xt[:-1], mt[:-1]), mt[:-1]) - yt[1:]) / s_t) ** 2).mean()  # 2-step loss: stabler rollouts
        return one + 0.5 * two

    final = fit(model, loss, 400, 3e-3, seed)
    path = out / "blizzard" / "model.onnx"
    export(model.eval(), (torch.tensor(x[:2]), torch.tensor(np.repeat(mask[None], 2, axis=0))), path)
    common = card_common(x, splits, 1, 1, horizon)
    k = min(SKILL_K, common["room"]["heldout"])
    skill = heldout_skill(
        path,
        x,
        splits["heldout"],
        length=1,
        per_call=1,
        horizon=horizon,
        k=k,
        static={"mask": mask},
        leads=[(1, "6 h"), (2, "12 h"), (4, "24 h")],
    )
    n_params = sum(p.numel() for p in model.parameters())
    card = {
        "title": "January 1996 blizzard, 6 fields on a 33x36 grid",
        "name": "blizzard",
        "mode": "state",
        "grid": True,
        "n_params": n_params,
        "seed": seed,
        "summary": "A small residual CNN stepping six-hourly sea-level pressure, 2 m temperature, 10 m and 500 hPa winds over North America (NCAR Graphics example data of the 1996 blizzard): Pangu-like in miniature, with a static mask input. 64 steps only: a demonstration of the pipeline, not a skilful forecaster, and too short for 32 disjoint scoring and held-out contexts (12 each).",
        "data": "libncarg-data {P,T,U,V,U500,V500}storm.cdf, 64 six-hourly steps; 224 masked points per field (fixed for psl, moving for t2m/v10/v500) filled with that field's mean; psl's fixed mask is the static input; 4 fields missing whole (t2m step 17, v10 steps 17/37, v500 step 36) interpolated from the neighbouring steps",
        "architecture": "normalise (buffers), Conv2d(7->32, 3x3), 3 residual Conv2d(32->32, 3x3) + GELU, Conv2d(32->6, 1x1), residual output; inputs x [B, 6, 33, 36], mask [B, 1, 33, 36]",
        "parameters": f"{n_params:,} (+12 normalisation constants)",
        "rollout": "state mode; 'mask' is static (declared in edgetqs.toml)",
        "training": f"Adam 3e-3 cosine, 400 full-batch steps on the {n_train - 1} pairs of the training rows, one- plus two-step MSE; final loss {final:.4f}",
        "contexts": "all 64 steps [64, 6, 33, 36] (float32) with the mask",
        **common,
        "skill_k": k,
        "skill": skill,
        "skill_before": before,
        "skill_note": "Before: trained on steps 0-51 and measured from steps 51-59, which overlapped training.",
        "train_seconds": time.time() - t0,
        "train_cpu_seconds": time.process_time() - c0,
        "description": "Jan 1996 blizzard fields (6 variables, 33x36), CNN with static mask",
    }
    toml = (
        'name = "blizzard"\nmodel = "model.onnx"\ncontexts = "contexts.npz"\nk = 8\n\n[rollout]\nstatic = ["mask"]\n\n'
        f"[score]\nhorizon = {horizon}\n"
    )
    write_example("blizzard", out, toml, card, {"record": x, "mask": mask, "variables": np.array(names)})
    _report("blizzard", n_params, final, skill, t0)


def train_patchtst(out: Path, seed: int = 0) -> None:
    t0, c0 = time.time(), time.process_time()
    record, names, where = tmy_stations()
    splits = {"train": (0.0, 0.6), "score": (0.6, 0.8), "heldout": (0.8, 1.0)}
    L, H, horizon, batch, n_iter = 192, 24, 6, 64, 150
    _, n_train = span_rows(splits["train"], len(record))
    torch.manual_seed(seed)
    model = PatchTST(record.shape[1], L, H)
    series = torch.tensor(record[:n_train].T.copy())  # [C, rows]: training rows only
    n_starts = n_train - L - H + 1  # windows whose 24 target hours are training rows too
    q = torch.tensor(model.quantiles)
    offs = torch.arange(L + H)
    gen = torch.Generator().manual_seed(seed)

    def loss(i: int) -> torch.Tensor:
        c = torch.randint(0, series.shape[0], (batch,), generator=gen)
        s = torch.randint(0, n_starts, (batch,), generator=gen)
        w = series[c[:, None], s[:, None] + offs]
        zq, mu, sd = model.series(w[:, :L])
        e = ((w[:, L:] - mu) / sd)[:, :, None] - zq  # pinball loss per quantile in normalised units
        return torch.maximum(q * e, (q - 1) * e).mean()

    final = fit(model, loss, n_iter, 1e-3, seed, weight_decay=0.01)
    path = out / "patchtst" / "model.onnx"
    export(model.eval(), (torch.tensor(record[None, :L]),), path)
    common = card_common(record, splits, L, H, horizon)
    k = min(SKILL_K, common["room"]["heldout"])
    skill = heldout_skill(
        path,
        record,
        splits["heldout"],
        length=L,
        per_call=H,
        horizon=horizon,
        k=k,
        out_index=(Ellipsis, 1),
        leads=[(n, f"{n} h") for n in (1, 6, 24, 72, 144)],
    )
    n_params = sum(p.numel() for p in model.parameters())
    card = {
        "title": "Patch transformer with quantile head, hourly weather at 3 stations",
        "name": "patchtst",
        "mode": "window",
        "n_params": n_params,
        "seed": seed,
        "summary": "A channel-independent patch transformer in the shape of PatchTST / TimesFM: every variable's 192-hour window is normalised "
        "by its own mean and spread, cut into 12 patches of 16 hours, passed through 4 pre-norm attention blocks, and a flatten head "
        "predicts the next 24 hours at the 10/50/90% quantiles. The rollout feeds back the median.",
        "data": f"{where}; variables {', '.join(TMY_VARS)} at each except Sand Point's pressure (constant in the file): "
        f"{record.shape[1]} series; TMY2 units converted to degC and m/s",
        "architecture": "per-series normalisation (window mean and spread), Linear(16->144) patch embedding + learned positions, 4 blocks "
        "[LayerNorm, q/k/v/o Linear(144->144), 4 heads, softmax attention; LayerNorm, Linear(144->576), GELU, Linear(576->144)], "
        f"LayerNorm, Linear(1728->72); input [B, 192, {record.shape[1]}], output [B, 24, {record.shape[1]}, 3] (quantiles 0.1, 0.5, 0.9)",
        "parameters": f"{n_params:,}",
        "rollout": "window mode, output_slice '...,1' (the median): append 24 hours, drop the oldest 24",
        "training": f"AdamW 1e-3 (weight decay 0.01) cosine, {n_iter} steps of {batch} random (series, window) pairs from the training rows, "
        f"pinball loss in normalised units; final loss {final:.4f}",
        "contexts": f"record [{len(record)}, {record.shape[1]}] (the typical year at all three stations), variables 'station:variable'",
        **common,
        "skill_k": k,
        "skill": skill,
        "skill_before": None,
        "train_seconds": time.time() - t0,
        "train_cpu_seconds": time.process_time() - c0,
        "description": "patch transformer, quantile head, 17 hourly series at 3 TMY stations, 192 h -> 24 h",
    }
    toml = (
        'name = "patchtst"\nmodel = "model.onnx"\ncontexts = "contexts.npz"\nk = 8\n\n[rollout]\nmode = "window"\noutput_slice = "...,1"\n\n'
        f"[score]\nhorizon = {horizon}\n"
    )
    write_example("patchtst", out, toml, card, {"record": record, "variables": np.array(names)})
    _report("patchtst", n_params, final, skill, t0)


def train_seaice(out: Path, seed: int = 0) -> None:
    t0, c0 = time.time(), time.process_time()
    x, ocean, _ = sea_ice()
    splits = {"train": (0.0, 0.4), "score": (0.4, 0.7), "heldout": (0.7, 1.0)}
    horizon, batch, n_iter = 4, 8, 150
    _, n_train = span_rows(splits["train"], len(x))
    train = x[:n_train]
    mean, std = float(train.mean()), float(train.std())
    torch.manual_seed(seed)
    model = IceUNet(mean, std)
    xt, yt = torch.tensor(train[:-1]), torch.tensor(train[1:])
    mt = torch.tensor(np.repeat(ocean[None], batch, axis=0))
    gen = torch.Generator().manual_seed(seed)

    def loss(i: int) -> torch.Tensor:
        b = torch.randint(0, len(xt), (batch,), generator=gen)
        return (((model(xt[b], mt) - yt[b]) / std) ** 2).mean()

    final = fit(model, loss, n_iter, 1e-3, seed)
    path = out / "seaice" / "model.onnx"
    export(model.eval(), (torch.tensor(x[:2]), torch.tensor(np.repeat(ocean[None], 2, axis=0))), path)
    common = card_common(x, splits, 1, 1, horizon)
    k = min(SKILL_K, common["room"]["heldout"])
    skill = heldout_skill(
        path,
        x,
        splits["heldout"],
        length=1,
        per_call=1,
        horizon=horizon,
        k=k,
        static={"mask": ocean},
        leads=[(n, f"{n} month{'s' if n > 1 else ''}") for n in (1, 2, 3, 4)],
    )
    n_params = sum(p.numel() for p in model.parameters())
    card = {
        "title": "Monthly sea-ice concentration, U-Net on both polar caps (49x100)",
        "name": "seaice",
        "mode": "state",
        "grid": True,
        "n_params": n_params,
        "seed": seed,
        "summary": "A two-level U-Net (about 1 M parameters, periodic in longitude) stepping monthly sea-ice concentration, with a static "
        "ocean mask input, as grid forecasters carry a land-sea mask. The record is the longest gridded one that loads offline here "
        f"(120 months), so the model is trained on {n_train - 1} month-to-month pairs: far too few for a million weights to learn much. "
        "It ships for its weights (quantization sensitivity of a realistic grid architecture), not for its skill.",
        "data": "libncarg-data fice.nc: 120 monthly means of ice concentration (0-1) from a coupled ocean/sea-ice model spin-up, 49 latitudes "
        "(77.4S-35.7S and 35.7N-90N stacked) x 100 longitudes; ocean mask = landsea.nc (1 degree, 0 = ocean) at the nearest point",
        "architecture": "normalise (scalars), concat mask, pad to 52 rows, Conv2d(2->64, 2x2, stride 2), 2 residual Conv2d(64->64, 3x3) + GELU, "
        "Conv2d(64->192, 2x2, stride 2), 2 residual Conv2d(192->192, 3x3) + GELU, ConvTranspose2d(192->64, 2x2), "
        "Conv2d(128->64, 3x3) + GELU, residual Conv2d(64->64, 3x3) + GELU, ConvTranspose2d(64->1, 2x2); 3x3 convolutions wrap in "
        "longitude (Slice + Concat) and zero-pad in latitude; output clip(x + 0.1 * std * increment, 0, 1); "
        "inputs x [B, 1, 49, 100], mask [B, 1, 49, 100]",
        "parameters": f"{n_params:,}",
        "rollout": "state mode; 'mask' is static (declared in edgetqs.toml)",
        "training": f"Adam 1e-3 cosine, {n_iter} steps of {batch} random pairs from the {n_train - 1} training pairs, one-step MSE in normalised "
        f"units; final loss {final:.4f}",
        "contexts": "record [120, 1, 49, 100] (float32) with the ocean mask",
        **common,
        "skill_k": k,
        "skill": skill,
        "skill_before": None,
        "train_seconds": time.time() - t0,
        "train_cpu_seconds": time.process_time() - c0,
        "description": "monthly sea-ice concentration (49x100), U-Net with static ocean mask",
    }
    toml = (
        'name = "seaice"\nmodel = "model.onnx"\ncontexts = "contexts.npz"\nk = 8\n\n[rollout]\nstatic = ["mask"]\n\n'
        f"[score]\nhorizon = {horizon}\n"
    )
    write_example("seaice", out, toml, card, {"record": x, "mask": ocean, "variables": np.array(["fice"])})
    _report("seaice", n_params, final, skill, t0)


JOBS: dict[str, Callable[[Path, int], None]] = {
    "lorenz96": train_lorenz96,
    "station": train_station,
    "blizzard": train_blizzard,
    "patchtst": train_patchtst,
    "seaice": train_seaice,
    "station-tod": train_station_tod,
    "station-tod-doy": lambda out, seed: train_station_tod(out, seed, day=True),  # not shipped: trained on request (--only station-tod-doy)
}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--only", default=",".join(j for j in JOBS if j != "station-tod-doy"), help="comma-separated examples to train")
    ap.add_argument("--out", type=Path, default=ROOT / "edgetqs" / "examples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--render-cards", action="store_true", help="only rewrite each card.md from its card.json")
    a = ap.parse_args()
    if a.render_cards:
        for name in a.only.split(","):
            render_card(a.out / name)
        return
    torch.use_deterministic_algorithms(True)
    for name in a.only.split(","):
        if name not in JOBS:
            raise SystemExit(f"unknown example '{name}'; expected some of {', '.join(JOBS)}")
        JOBS[name](a.out, a.seed)


if __name__ == "__main__":
    main()
