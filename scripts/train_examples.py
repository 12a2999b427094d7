"""Train the bundled example forecasters with fixed seeds and ship them as package data.

    python scripts/train_examples.py [--only lorenz96,station,blizzard] [--out edgetqs/examples]

Each example lands in edgetqs/examples/NAME/ as model.onnx (torch dynamo export, dynamic batch),
contexts.npz (held-out record, time first, with variable names), edgetqs.toml and a model card
(card.md + card.json) with one-step and rollout skill against persistence on held-out data.
Needs the `examples` extra (torch, pvlib) and Debian's libncarg-data for the blizzard fields.
A few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[1]
NCARG = Path("/usr/share/ncarg/data/cdf")


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
            k1 = f(x); k2 = f(x + h / 2 * k1); k3 = f(x + h / 2 * k2); k4 = f(x + h * k3)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        if i >= 1000:
            out[i - 1000] = x
    return out.astype(np.float32)


def station_weather() -> tuple[np.ndarray, list[str], str]:
    import pvlib

    path = os.path.join(os.path.dirname(pvlib.__file__), "data", "723170TYA.CSV")
    df, meta = pvlib.iotools.read_tmy3(path, map_variables=True)
    cols = ["temp_air", "temp_dew", "relative_humidity", "pressure", "wind_speed", "ghi"]
    name = str(meta.get('Name', 'Greensboro')).strip('"')
    return df[cols].to_numpy(np.float32), cols, f"TMY3 station {meta.get('USAF', 723170)} ({name}, {meta.get('State', 'NC')})"


def blizzard() -> tuple[np.ndarray, np.ndarray, list[str]]:
    import xarray as xr

    names = [("Pstorm.cdf", "p", "psl"), ("Tstorm.cdf", "t", "t2m"), ("Ustorm.cdf", "u", "u10"), ("Vstorm.cdf", "v", "v10"),
             ("U500storm.cdf", "u", "u500"), ("V500storm.cdf", "v", "v500")]
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


# ------------------------------------------------------------------ training and skill

def fit(model: nn.Module, loss_fn, n_iter: int, lr: float, seed: int) -> float:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, n_iter)
    loss = torch.tensor(0.0)
    for i in range(n_iter):
        opt.zero_grad()
        loss = loss_fn(i)
        loss.backward()
        opt.step()
        sched.step()
    return float(loss)


def nrmse(pred: np.ndarray, truth: np.ndarray, spread: np.ndarray, axis_c: int) -> float:
    """RMS error with each channel divided by its spread (the TQS normalisation)."""
    shape = [1] * pred.ndim
    shape[axis_c] = -1
    return float(np.sqrt(np.mean(((pred - truth) / spread.reshape(shape)) ** 2)))


def export(model: nn.Module, args: tuple, path: Path) -> None:
    from edgetqs.model import export_torch

    export_torch(model, args, path)


def write_example(name: str, out: Path, toml: str, card: dict, arrays: dict) -> None:
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(d / "contexts.npz", **arrays)
    (d / "edgetqs.toml").write_text(toml)
    (d / "card.json").write_text(json.dumps(card, indent=1))
    lines = [f"# {card['title']}", "", card["summary"], "", "| | |", "|---|---|"]
    for k in ("data", "architecture", "parameters", "rollout", "training", "contexts"):
        lines.append(f"| {k} | {card[k]} |")
    lines += ["", "## Skill on held-out data (normalised RMSE: each variable divided by its spread)", "",
              "| lead | model | persistence |", "|---|---|---|"]
    for row in card["skill"]:
        lines.append(f"| {row['lead']} | {row['model']:.4f} | {row['persistence']:.4f} |")
    lines += ["", f"Trained by `scripts/train_examples.py` with seed {card['seed']} in {card['train_seconds']:.0f} s on 2 CPU cores."]
    (d / "card.md").write_text("\n".join(lines) + "\n")


def rollout_np(onnx_path: Path, x0: np.ndarray, steps: int, feeds: dict | None = None, increment: bool = False,
               window: bool = False) -> np.ndarray:
    """Roll the exported model out with onnxruntime (the skill figures are those of the shipped file)."""
    import onnxruntime as ort

    s = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    x, outs = x0, []
    for _ in range(steps):
        y = s.run(None, {name: x, **(feeds or {})})[0]
        if increment:
            y = x + y
        outs.append(y)
        x = np.concatenate([x[:, y.shape[1]:], y], axis=1) if window else y
    return np.stack(outs)  # [steps, B, ...]


def train_lorenz96(out: Path, seed: int = 0) -> None:
    t0 = time.time()
    data = lorenz96(14000, seed=seed)
    train, test = data[:12000], data[12000:]
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
    export(model.eval(), (torch.tensor(test[:2]),), path)
    starts = np.arange(0, 1900, 50)
    spread = test.std(axis=0)
    pred = rollout_np(path, test[starts], 20, increment=True)
    skill = []
    for lead in (1, 5, 10, 20):
        truth = test[starts + lead]
        skill.append({"lead": f"{lead} steps ({lead * 0.05:.2f} MTU)", "model": nrmse(pred[lead - 1], truth, spread, 1),
                      "persistence": nrmse(test[starts], truth, spread, 1)})
    n_params = sum(p.numel() for p in model.parameters())
    card = {
        "title": "Lorenz-96 emulator (40 variables)", "name": "lorenz96", "mode": "state", "n_params": n_params, "seed": seed,
        "summary": "The classic weather proxy: a periodic 1-D convolutional net that predicts the 6-hour-equivalent increment of the 40-variable Lorenz-96 system (F=8).",
        "data": "Lorenz-96, F=8, dt=0.05 (~6 h), RK4 with 10 substeps; 12,000 training steps, 2,000 held-out steps (contexts.npz)",
        "architecture": "periodic Conv1d(1->48, k=5), 5 residual pointwise Conv1d(48->48) + tanh, Conv1d(48->1); input [B, 40], output increment [B, 40]",
        "parameters": f"{n_params:,}", "rollout": "state mode, increment (next = x + output)",
        "training": f"Adam 3e-3 cosine, 3,000 steps of 256, one-step MSE; final loss {final:.4f}",
        "contexts": "held-out trajectory [2000, 40], variables x00..x39", "skill": skill, "train_seconds": time.time() - t0,
        "description": "Lorenz-96 (40 variables) state model, increment prediction",
    }
    toml = ('name = "lorenz96"\nmodel = "model.onnx"\ncontexts = "contexts.npz"\nk = 8\n\n[rollout]\nmode = "state"\nincrement = true\n\n'
            '[score]\nhorizon = 20\n')
    write_example("lorenz96", out, toml, card, {"record": test, "variables": np.array([f"x{i:02d}" for i in range(40)])})
    print(f"lorenz96: {n_params} params, loss {final:.4f}, skill {[(s['lead'], round(s['model'], 4), round(s['persistence'], 4)) for s in skill]}, {time.time() - t0:.0f} s")


def train_station(out: Path, seed: int = 0) -> None:
    t0 = time.time()
    data, cols, where = station_weather()
    n_train = int(len(data) * 0.8)
    train, test = data[:n_train], data[n_train:]
    mean, std = train.mean(axis=0), train.std(axis=0)
    L, H = 24, 6
    idx = np.arange(0, n_train - L - H)
    X = np.stack([train[i:i + L] for i in idx])
    Y = np.stack([train[i + L:i + L + H] for i in idx])
    torch.manual_seed(seed)
    model = StationNet(mean, std, L, H)
    xt, yt = torch.tensor(X), torch.tensor((Y - mean) / std)
    gen = torch.Generator().manual_seed(seed)
    m_t, s_t = torch.tensor(mean), torch.tensor(std)

    def loss(i: int) -> torch.Tensor:
        b = torch.randint(0, len(xt), (256,), generator=gen)
        return ((((model(xt[b]) - m_t) / s_t) - yt[b]) ** 2).mean()

    final = fit(model, loss, 2500, 1e-3, seed)
    path = out / "station" / "model.onnx"
    export(model.eval(), (torch.tensor(test[None, :L]),), path)
    starts = np.arange(0, len(test) - L - 48, 24)
    x0 = np.stack([test[s:s + L] for s in starts])
    pred = rollout_np(path, x0, 8, window=True)  # [8, B, 6, C] -> 48 hours
    pred_h = pred.transpose(1, 0, 2, 3).reshape(len(starts), -1, len(cols))
    skill = []
    for lead in (1, 6, 24, 48):
        truth = np.stack([test[s + L + lead - 1] for s in starts])
        skill.append({"lead": f"{lead} h", "model": nrmse(pred_h[:, lead - 1], truth, std, 1),
                      "persistence": nrmse(x0[:, -1], truth, std, 1)})
    n_params = sum(p.numel() for p in model.parameters())
    card = {
        "title": "Hourly station weather, 24 h in -> 6 h out", "name": "station", "mode": "window", "n_params": n_params, "seed": seed,
        "summary": f"A window MLP on six hourly variables from {where} (pvlib's bundled TMY3 file). Normalisation constants live in the graph as buffers, as in many frozen exports.",
        "data": f"pvlib TMY3 723170TYA.CSV, variables {', '.join(cols)}; first 80% of the year for training, last 20% held out (contexts.npz)",
        "architecture": "normalise (buffers in_mean/in_std), Linear(144->128), 2 residual Linear(128->128) + ReLU, Linear(128->36) added to the last observed hour, de-normalise; input [B, 24, 6], output [B, 6, 6]",
        "parameters": f"{n_params:,} (+12 normalisation constants)", "rollout": "window mode: append the 6 predicted hours, drop the oldest 6",
        "training": f"Adam 1e-3 cosine, 2,500 steps of 256, 6-hour MSE in normalised units; final loss {final:.4f}",
        "contexts": f"held-out record [{len(test)}, 6] with variable names", "skill": skill, "train_seconds": time.time() - t0,
        "description": "hourly station weather (pvlib TMY3), 24 h window -> 6 h",
    }
    toml = 'name = "station"\nmodel = "model.onnx"\ncontexts = "contexts.npz"\nk = 8\n\n[score]\nhorizon = 8\n'
    write_example("station", out, toml, card, {"record": test, "variables": np.array(cols)})
    print(f"station: {n_params} params, loss {final:.4f}, skill {[(s['lead'], round(s['model'], 4), round(s['persistence'], 4)) for s in skill]}, {time.time() - t0:.0f} s")


def train_blizzard(out: Path, seed: int = 0) -> None:
    t0 = time.time()
    x, mask, names = blizzard()
    n_train = 52
    train = x[:n_train]
    mean, std = train.mean(axis=(0, 2, 3)), train.std(axis=(0, 2, 3))
    torch.manual_seed(seed)
    model = BlizzardNet(mean, std)
    xt = torch.tensor(train[:-1]); yt = torch.tensor(train[1:])
    mt = torch.tensor(np.repeat(mask[None], len(xt), axis=0))
    s_t = torch.tensor(std).reshape(1, -1, 1, 1)

    def loss(i: int) -> torch.Tensor:
        one = (((model(xt, mt) - yt) / s_t) ** 2).mean()
        two = (((model(model(xt[:-1], mt[:-1]), mt[:-1]) - yt[1:]) / s_t) ** 2).mean()  # 2-step loss: stabler rollouts
        return one + 0.5 * two

    final = fit(model, loss, 400, 3e-3, seed)
    path = out / "blizzard" / "model.onnx"
    export(model.eval(), (torch.tensor(x[:2]), torch.tensor(np.repeat(mask[None], 2, axis=0))), path)
    starts = np.arange(n_train - 1, 64 - 4)
    feeds = {"mask": np.repeat(mask[None], len(starts), axis=0)}
    pred = rollout_np(path, x[starts], 4, feeds=feeds)
    skill = []
    for lead in (1, 2, 4):
        truth = x[starts + lead]
        skill.append({"lead": f"{lead * 6} h", "model": nrmse(pred[lead - 1], truth, std, 1), "persistence": nrmse(x[starts], truth, std, 1)})
    n_params = sum(p.numel() for p in model.parameters())
    card = {
        "title": "January 1996 blizzard, 6 fields on a 33x36 grid", "name": "blizzard", "mode": "state", "n_params": n_params, "seed": seed,
        "summary": "A small residual CNN stepping six-hourly sea-level pressure, 2 m temperature, 10 m and 500 hPa winds over North America (NCAR Graphics example data of the 1996 blizzard): Pangu-like in miniature, with a static mask input. 64 steps only: a demonstration of the pipeline, not a skilful forecaster.",
        "data": "libncarg-data {P,T,U,V,U500,V500}storm.cdf, 64 six-hourly steps; steps 0-51 train, 52-63 held out; 224 masked points per field (fixed for psl, moving for t2m/v10/v500) filled with that field's mean; psl's fixed mask is the static input; 4 fields missing whole (t2m step 17, v10 steps 17/37, v500 step 36) interpolated from the neighbouring steps",
        "architecture": "normalise (buffers), Conv2d(7->32, 3x3), 3 residual Conv2d(32->32, 3x3) + GELU, Conv2d(32->6, 1x1), residual output; inputs x [B, 6, 33, 36], mask [B, 1, 33, 36]",
        "parameters": f"{n_params:,} (+12 normalisation constants)", "rollout": "state mode; 'mask' is static (declared in edgetqs.toml)",
        "training": f"Adam 3e-3 cosine, 400 full-batch steps, one- plus two-step MSE; final loss {final:.4f}",
        "contexts": "all 64 steps [64, 6, 33, 36] (float32) with the mask; draw held-out contexts with --span 0.8:1", "skill": skill,
        "train_seconds": time.time() - t0, "description": "Jan 1996 blizzard fields (6 variables, 33x36), CNN with static mask",
    }
    toml = ('name = "blizzard"\nmodel = "model.onnx"\ncontexts = "contexts.npz"\nk = 8\n\n[rollout]\nstatic = ["mask"]\n\n'
            '[score]\nhorizon = 12\n')
    write_example("blizzard", out, toml, card, {"record": x, "mask": mask, "variables": np.array(names)})
    print(f"blizzard: {n_params} params, loss {final:.4f}, skill {[(s['lead'], round(s['model'], 4), round(s['persistence'], 4)) for s in skill]}, {time.time() - t0:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="lorenz96,station,blizzard")
    ap.add_argument("--out", type=Path, default=ROOT / "edgetqs" / "examples")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    jobs = {"lorenz96": train_lorenz96, "station": train_station, "blizzard": train_blizzard}
    for name in a.only.split(","):
        jobs[name](a.out, a.seed)


if __name__ == "__main__":
    main()
