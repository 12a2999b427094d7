"""Check: roll a converted artifact out where it will run and compare it with the float trajectory.

The float reference is computed on the host from the float model and saved as ``reference.npz``
(contexts, static inputs, float trajectories, the truth that follows each context in the record
when there is one), so a device never needs the float model. A job folder (the self-contained
`edgetqs.driver`, the artifact, the inputs) runs on a device (`edgetqs.devices`); the trajectories
that come back are scored per lead time and per variable: normalised RMSE (each variable divided by
its spread in the record, or in the float trajectories without one), anomaly correlation (ACC, anomalies from the record's
climatology), bias (in the variable's units), the divergence horizon (first lead where the
normalised RMSE over all variables crosses the tolerance) and the first non-finite step. Three rows:
quantized vs float (pass/fail), quantized vs truth, float vs truth.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import BadInputError, EdgetqsError

SCHEMA_VERSION = 1
REFERENCE_VERSION = 1
ROWS = ("quantized_vs_float", "quantized_vs_truth", "float_vs_truth")


# ------------------------------------------------------------------------------------ reference


@dataclass(frozen=True)
class Reference:
    """Everything a device check compares against (``reference.npz``)."""

    contexts: dict[str, np.ndarray]  # pair input -> [K, ...]
    statics: dict[str, np.ndarray]
    float_traj: dict[str, np.ndarray]  # pair output -> [T, K, ...]
    truth: dict[str, np.ndarray] | None  # pair output -> [T, K, ...], NaN where the record ends
    meta: dict  # spec, horizon, inputs, outputs, variables, climatology, model name and hash

    @property
    def horizon(self) -> int:
        return int(self.meta["horizon"])

    def save(self, path: Path) -> Path:
        arrays = {f"ctx__{k}": v for k, v in self.contexts.items()}
        arrays |= {f"static__{k}": v for k, v in self.statics.items()}
        arrays |= {f"float__{k}": v for k, v in self.float_traj.items()}
        if self.truth is not None:
            arrays |= {f"truth__{k}": v for k, v in self.truth.items()}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, meta=np.array(json.dumps(self.meta)), **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> "Reference":
        try:
            d = np.load(path, allow_pickle=False)
            meta = json.loads(str(d["meta"]))
        except (OSError, ValueError, KeyError) as exc:
            raise BadInputError(f"'{path}' is not a reference.npz written by edgetqs ({exc})") from None
        if meta.get("reference_version") != REFERENCE_VERSION:
            raise BadInputError(f"'{path}' has reference_version {meta.get('reference_version')}; this edgetqs reads {REFERENCE_VERSION}")

        def pick(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix):]: d[k] for k in d.files if k.startswith(prefix)}

        truth = pick("truth__")
        return cls(pick("ctx__"), pick("static__"), pick("float__"), truth or None, meta)


def _truth(contexts, spec, float_traj: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
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
                    avail = data[a:a + h]
                    truth[t, j, :len(avail)] = avail
                elif s + t + 1 < data.shape[0]:
                    truth[t, j] = data[s + t + 1]
        out[oname] = truth
    return out


def make_reference(model, spec, contexts, horizon: int) -> Reference:
    """Roll the float model out on the host (onnxruntime) and package it with the contexts and truth."""
    from .rollout import Rollout

    ref = Rollout(model, spec, contexts.statics, model_bytes=model.bytes).run(contexts.arrays, horizon)
    if ref.first_nonfinite is not None:
        from .errors import DivergedRolloutError

        raise DivergedRolloutError(f"the float model itself leaves the finite numbers at step {ref.first_nonfinite} of {horizon}; use --horizon {max(ref.first_nonfinite - 1, 1)}")
    float_traj = {o: s.astype(np.float32) for (_, o), s in zip(spec.pairs, ref.steps)}
    truth = _truth(contexts, spec, float_traj)
    # per-variable mean and spread of the whole record: ACC's anomalies are taken from the mean and
    # every RMSE is divided by the spread (the float trajectories' own spread when there is no record)
    clim = spread = None
    if contexts.record is not None:
        data = contexts.record.arrays[spec.pairs[0][0]].astype(np.float64)  # [N, ...]: time plays the batch axis
        ax = _channel_axis(spec.to_dict(), data.ndim) if spec.mode == "state" else data.ndim - 1
        moved = np.moveaxis(data, ax, 0).reshape(data.shape[ax], -1)
        clim = moved.mean(axis=1).tolist()
        spread = moved.std(axis=1).tolist()
    meta = {
        "reference_version": REFERENCE_VERSION, "model": model.name, "model_sha256": model.sha256, "horizon": horizon,
        "spec": spec.to_dict(), "variables": list(contexts.variables), "contexts": contexts.describe(), "climatology": clim, "spread": spread,
        "inputs": [{"name": i.name, "shape": list(i.shape[1:]), "dtype": str(np.dtype(i.dtype))} for i in model.inputs],
        "outputs": [{"name": o.name, "shape": list(o.shape[1:])} for o in model.outputs],
    }
    return Reference({n: c for (n, _), c in zip(spec.pairs, contexts.arrays)}, dict(contexts.statics), float_traj, truth, meta)


def contexts_with_truth(inputs, horizon: int, span: tuple[float, float] = (0.0, 1.0)):
    """The same number of contexts, drawn from ``span`` of the record so that it still holds
    ``horizon`` steps after each (quantized vs truth and float vs truth then cover every lead);
    unchanged when it cannot."""
    from .contexts import select_contexts

    ctx = inputs.contexts
    if ctx.record is None or any(i < 0 for i in ctx.indices):
        return ctx
    spec, model = inputs.spec, inputs.model
    n = ctx.record.arrays[spec.pairs[0][0]].shape[0]
    if spec.mode == "window":
        out = {o.name: o for o in model.outputs}[spec.pairs[0][1]]
        h = out.shape[1] if out.shape and len(out.shape) > 1 and isinstance(out.shape[1], int) else 1
        need = ctx.arrays[0].shape[1] + horizon * h
    else:
        need = horizon + 1
    hi = 1.0 - (need - (ctx.arrays[0].shape[1] if spec.mode == "window" else 1)) / n
    hi = min(hi, span[1])
    if hi - span[0] <= 0.05:
        return ctx
    try:
        return select_contexts(ctx.record, model, spec, ctx.k, span=(span[0], hi))
    except EdgetqsError:
        return ctx


# ------------------------------------------------------------------------------------ metrics


def _channel_axis(spec: dict, ndim_with_batch: int) -> int:
    ax = -1 if spec["channel_axis"] is None else spec["channel_axis"]
    return ax if ax >= 0 else ndim_with_batch + ax


def canonical(traj: np.ndarray, spec: dict) -> np.ndarray:
    """[T, K, ...] -> [lead, K, variable, points]: window steps unroll into leads of one row each."""
    if spec["mode"] == "window":  # [T, K, H, C]
        t, k, h, c = traj.shape
        return traj.transpose(0, 2, 1, 3).reshape(t * h, k, c, 1)
    ax = _channel_axis(spec, traj.ndim - 1) + 1  # +1: the T axis
    moved = np.moveaxis(traj, ax, 2)
    return moved.reshape(moved.shape[0], moved.shape[1], moved.shape[2], -1)


@dataclass(frozen=True)
class RowMetrics:
    """One comparison (a vs b) per lead and variable."""

    nrmse_by_lead: tuple[float | None, ...]  # over all variables (RMS of the per-variable nRMSE)
    nrmse: tuple[tuple[float | None, ...], ...]  # [lead][variable]
    acc: tuple[tuple[float | None, ...], ...] | None
    bias: tuple[tuple[float | None, ...], ...]  # in the variable's units
    divergence_lead: int | None  # first lead (1-based) where nrmse_by_lead > tolerance
    first_nonfinite_lead: int | None
    valid_leads: int  # leads with data (truth may end before the horizon)


def row_metrics(a: np.ndarray, b: np.ndarray, spread: np.ndarray, tolerance: float, clim: np.ndarray | None) -> RowMetrics:
    """a, b: [lead, K, variable, points]; spread: [variable] (the float trajectories' spread)."""
    from .jsonfile import finite_or_none

    with np.errstate(all="ignore"):
        d = a.astype(np.float64) - b
        valid = np.isfinite(b)
        d_valid = np.where(valid, d, 0.0)
        n = valid.sum(axis=(1, 3))
        mse = np.where(n > 0, (np.where(valid, d, 0.0) ** 2).sum(axis=(1, 3)) / np.maximum(n, 1), np.nan)
        # a non-finite prediction where truth exists is an infinite error, not a missing one
        bad_pred = (~np.isfinite(a) & valid).any(axis=(1, 3))
        mse = np.where(bad_pred, np.inf, mse)
        nrmse = np.sqrt(mse) / spread[None, :]
        bias = np.where(n > 0, d_valid.sum(axis=(1, 3)) / np.maximum(n, 1), np.nan)
        bias = np.where(bad_pred, np.nan, bias)
        overall = np.sqrt(np.nanmean(nrmse ** 2, axis=1)) if nrmse.size else np.array([])
        acc = None
        if clim is not None:
            aa = np.where(valid, a - clim[None, None, :, None], 0.0)
            bb = np.where(valid, b - clim[None, None, :, None], 0.0)
            num = (aa * bb).sum(axis=(1, 3))
            den = np.sqrt((aa ** 2).sum(axis=(1, 3)) * (bb ** 2).sum(axis=(1, 3)))
            acc = np.where((den > 0) & ~bad_pred, num / np.where(den > 0, den, 1), np.nan)
    has = n.sum(axis=1) > 0
    nonfinite = ~np.isfinite(a).all(axis=(1, 2, 3))
    first_bad = int(np.argmax(nonfinite)) + 1 if nonfinite.any() else None
    over = (overall > tolerance) | ~np.isfinite(overall)
    over &= has
    div = int(np.argmax(over)) + 1 if over.any() else None

    def grid(x):
        return tuple(tuple(finite_or_none(list(r))) for r in x)

    return RowMetrics(tuple(finite_or_none(list(overall))), grid(nrmse), None if acc is None else grid(acc), grid(bias), div, first_bad, int(has.sum()))


# ------------------------------------------------------------------------------------ the check


@dataclass(frozen=True)
class CheckResult:
    """What `edgetqs check` found, written as ``check.json``."""

    artifact: str
    artifact_sha256: str
    format: str
    device: dict
    emulated: bool
    target: str | None
    tolerance: float
    horizon: int  # model steps
    leads: int  # lead times compared (window models: steps x rows per step)
    variables: tuple[str, ...]
    passed: bool
    verdict: str
    rows: dict  # ROWS -> RowMetrics as dict (quantized_vs_truth / float_vs_truth absent without truth)
    latency_ms: dict  # n, min, p50, p90, p99, mean, max over steps after the first
    latency_ms_first: float | None
    latency_ms_init: float | None
    peak_rss_bytes: int | None
    runtime: dict
    machine: str
    cpu: str
    python: str
    contexts: dict
    seconds: float
    schema_version: int = SCHEMA_VERSION
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["variables"] = list(self.variables)
        d["notes"] = list(self.notes)
        return d

    def save(self, path: Path) -> Path:
        from .jsonfile import write_json

        return write_json(path, self.to_dict())


def artifact_format(path: Path, declared: str | None = None) -> str:
    if declared:
        return declared
    conv = path.parent / "convert.json"
    if conv.exists():
        try:
            info = json.loads(conv.read_text())
            if info.get("artifact") == path.name:
                return info["format"]
        except (json.JSONDecodeError, KeyError):
            pass
    name = path.name
    if name.endswith(".tflm.tflite"):
        return "tflm"
    return {".onnx": "ort", ".ort": "ort-mobile", ".tflite": "tflite"}.get(path.suffix, "")


def validate_artifact(path: Path, fmt: str) -> None:
    """Parse the artifact on the host first, so a corrupted file is a clear error, not a device crash."""
    if not path.exists():
        raise BadInputError(f"artifact '{path}' does not exist")
    if fmt not in ("ort", "ort-mobile", "tflite", "tflm"):
        raise BadInputError(f"cannot tell the format of '{path}'; pass --format ort|ort-mobile|tflite|tflm")
    data = path.read_bytes()
    try:
        if fmt in ("ort", "ort-mobile"):
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 4
            if fmt == "ort-mobile":
                opts.add_session_config_entry("session.load_model_format", "ORT")
            ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        else:
            try:
                from ai_edge_litert.interpreter import Interpreter
            except ImportError:
                return  # the device reports it; the host cannot parse TFLite without the extra
            Interpreter(model_content=data)
    except Exception as exc:  # noqa: BLE001 - every runtime has its own parse error types
        raise BadInputError(f"artifact '{path}' is not a valid {fmt} model ({type(exc).__name__}: {str(exc).strip()[:200]}); reconvert it") from None


def _job(ref: Reference, artifact: Path, fmt: str, work: Path, arena: int | None) -> None:
    from . import driver

    shutil.copy(driver.__file__, work / "driver.py")
    shutil.copy(artifact, work / artifact.name)
    spec = ref.meta["spec"]
    job = {
        "artifact": artifact.name, "format": fmt, "horizon": ref.horizon, "mode": spec["mode"], "pairs": spec["pairs"],
        "increment": spec["increment"], "output_slice": spec["output_slice"], "threads": 1,
        "inputs": ref.meta["inputs"], "outputs": ref.meta["outputs"],
    }
    if fmt == "tflm":
        from .convert.tflm import io_order, measure_arena

        job["tflm_inputs"], job["tflm_outputs"] = io_order(artifact.read_bytes(), [i["name"] for i in ref.meta["inputs"]],
                                                           [o["name"] for o in ref.meta["outputs"]])
        job["arena_bytes"] = arena or measure_arena(artifact, len(ref.meta["inputs"]))[0]
    (work / "job.json").write_text(json.dumps(job))
    np.savez(work / "inputs.npz", **{f"ctx__{k}": v for k, v in ref.contexts.items()}, **{f"static__{k}": v for k, v in ref.statics.items()})


def check(artifact: Path, reference: Reference, device, tolerance: float, target: str | None = None, fmt: str | None = None,
          arena_bytes: int | None = None, validated: bool = False) -> tuple[CheckResult, dict[str, np.ndarray]]:
    """Run ``artifact`` on ``device`` from the reference's contexts and compare. Returns the result
    and the device's trajectories (pair output -> [T, K, ...]).

    Raises:
        BadInputError: a missing or corrupted artifact; DeviceError: the device could not run it.
    """
    from .devices import run_job

    t0 = time.perf_counter()
    artifact = Path(artifact)
    fmt = artifact_format(artifact, fmt)
    if not validated:  # the CLI parses the artifact first, before it builds a reference
        validate_artifact(artifact, fmt)
    work = Path(tempfile.mkdtemp(prefix="edgetqs-check-"))
    try:
        _job(reference, artifact, fmt, work, arena_bytes)
        run_job(device, work, fmt)
        info = json.loads((work / "result.json").read_text())
        got_npz = np.load(work / "result.npz")
        got = {k[len("traj__"):]: got_npz[k] for k in got_npz.files}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    spec = reference.meta["spec"]
    outs = [o for _, o in spec["pairs"]]
    q = np.concatenate([canonical(got[o], spec) for o in outs], axis=2)
    f = np.concatenate([canonical(reference.float_traj[o], spec) for o in outs], axis=2)
    with np.errstate(all="ignore"):
        spread = f.astype(np.float64).transpose(2, 0, 1, 3).reshape(f.shape[2], -1).std(axis=1)
    if reference.meta.get("spread") is not None and len(reference.meta["spread"]) == len(spread):
        spread = np.asarray(reference.meta["spread"], dtype=np.float64)
    spread = np.where(spread > 0, spread, 1.0)
    clim = np.asarray(reference.meta["climatology"]) if reference.meta.get("climatology") is not None else None
    if clim is not None and clim.shape[0] != f.shape[2]:
        clim = None
    rows = {"quantized_vs_float": row_metrics(q, f, spread, tolerance, clim)}
    if reference.truth is not None:
        tr = np.concatenate([canonical(reference.truth[o], spec) for o in outs], axis=2)
        rows["quantized_vs_truth"] = row_metrics(q, tr, spread, tolerance, clim)
        rows["float_vs_truth"] = row_metrics(f, tr, spread, tolerance, clim)
    variables = tuple(reference.meta.get("variables") or ())
    if len(variables) != f.shape[2]:
        variables = tuple(f"var{i}" for i in range(f.shape[2]))
    main = rows["quantized_vs_float"]
    leads = f.shape[0]
    if main.first_nonfinite_lead is not None:
        passed, verdict = False, f"FAIL: the quantized rollout produced NaN/Inf at lead {main.first_nonfinite_lead} of {leads}"
    elif main.divergence_lead is not None:
        passed, verdict = False, (f"FAIL: the quantized rollout leaves the float trajectory at lead {main.divergence_lead} of {leads} "
                                  f"(normalised RMSE {main.nrmse_by_lead[main.divergence_lead - 1]:.3g} > tolerance {tolerance:g})")
    else:
        worst = max(v for v in main.nrmse_by_lead if v is not None)
        passed, verdict = True, f"PASS: the quantized rollout stays within {tolerance:g} of the float trajectory for all {leads} leads (worst normalised RMSE {worst:.3g})"
    notes = []
    if device.emulated:
        notes.append("latency was measured under qemu user-mode emulation: it says nothing about a real board's speed")
    if "float_vs_truth" not in rows:
        notes.append("no truth after the contexts (premade or spun-up contexts): only quantized vs float")
    res = CheckResult(
        artifact=artifact.name, artifact_sha256=hashlib.sha256(artifact.read_bytes()).hexdigest(), format=fmt, device=device.to_dict(),
        emulated=device.emulated, target=target, tolerance=tolerance, horizon=reference.horizon, leads=leads, variables=variables,
        passed=passed, verdict=verdict, rows={k: asdict(v) for k, v in rows.items()}, latency_ms=info.get("latency_ms", {}),
        latency_ms_first=info.get("latency_ms_first"), latency_ms_init=info.get("latency_ms_init"), peak_rss_bytes=info.get("peak_rss_bytes"),
        runtime=info.get("runtime", {}), machine=info.get("machine", ""), cpu=info.get("cpu", ""), python=info.get("python", ""),
        contexts=reference.meta.get("contexts", {}), seconds=time.perf_counter() - t0, notes=tuple(notes),
    )
    return res, got


def plot_check(result: CheckResult, path: Path) -> Path:
    """Normalised RMSE vs lead per variable (quantized vs float), with the tolerance; truth rows beside."""
    from .plots import _pyplot, _save

    plt = _pyplot()
    rows = result.rows
    n = 2 if "float_vs_truth" in rows else 1
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 4.2), squeeze=False)
    ax = axes[0][0]
    grid = rows["quantized_vs_float"]["nrmse"]
    leads = np.arange(1, len(grid) + 1)
    vals = np.array([[np.nan if v is None else v for v in r] for r in grid])
    many = vals.shape[1] > 10
    for j, name in enumerate(result.variables):
        ax.plot(leads, vals[:, j], lw=0.8 if many else 1.5, alpha=0.5 if many else 1, label=None if many else name)
    overall = [np.nan if v is None else v for v in rows["quantized_vs_float"]["nrmse_by_lead"]]
    ax.plot(leads, overall, color="k", lw=2.2, label="all variables")
    ax.axhline(result.tolerance, color="r", ls="--", lw=1, label=f"tolerance {result.tolerance:g}")
    ax.set_xlabel("lead (steps)")
    ax.set_ylabel("normalised RMSE vs float")
    ax.set_title(f"{result.artifact} on {result.device['name']}: {'PASS' if result.passed else 'FAIL'}")
    ax.legend(fontsize=7, ncol=2)
    if n == 2:
        ax2 = axes[0][1]
        for key, style in (("quantized_vs_truth", "-"), ("float_vs_truth", "--")):
            y = [np.nan if v is None else v for v in rows[key]["nrmse_by_lead"]]
            ax2.plot(np.arange(1, len(y) + 1), y, ls=style, lw=2, label=key.replace("_", " "))
        ax2.set_xlabel("lead (steps)")
        ax2.set_ylabel("normalised RMSE vs truth")
        ax2.set_title("against what happened")
        ax2.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


__all__ = ["Reference", "make_reference", "check", "CheckResult", "plot_check", "row_metrics", "canonical", "ROWS"]
