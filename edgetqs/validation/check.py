"""Check: roll a converted artifact out where it will run and compare it with the float trajectory.

The float reference (`edgetqs.validation.reference`) comes from the host, so a device never needs the
float model. A job folder (the self-contained driver with its two companion files, the artifact, the
inputs) runs on a device (`edgetqs.validation.devices`); the trajectories that come back are scored per
lead time and per variable (`edgetqs.core.metrics`): normalised RMSE, anomaly correlation (ACC), bias,
the divergence horizon (first lead where the normalised RMSE over all variables crosses the
tolerance) and the first non-finite step. Three rows: quantized vs float (pass/fail), quantized vs
truth, float vs truth.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..core.contexts import ContextsInfo
from ..core.metrics import canonical, row_metrics
from ..core.results import Frozen, ResultFile, edgetqs_version
from ..errors import BadInputError
from ..runtimes import RUNTIMES
from ..runtimes.base import by_artifact
from .devices import Device
from .reference import Reference, io_description

ROWS = ("quantized_vs_float", "quantized_vs_truth", "float_vs_truth")


class Row(Frozen):
    """One comparison (a vs b) per lead and variable (`edgetqs.core.metrics.RowMetrics`)."""

    nrmse_by_lead: tuple[float | None, ...]
    nrmse: tuple[tuple[float | None, ...], ...]  # [lead][variable]
    acc: tuple[tuple[float | None, ...], ...] | None
    bias: tuple[tuple[float | None, ...], ...]
    divergence_lead: int | None
    first_nonfinite_lead: int | None
    valid_leads: int


class CheckResult(ResultFile):
    """What `edgetqs check` found, written as ``check.json``."""

    KIND: ClassVar[str] = "check.json"
    COMMAND: ClassVar[str] = "edgetqs check"
    SCHEMA_VERSION: ClassVar[int] = 2

    schema_version: int = SCHEMA_VERSION
    artifact: str
    artifact_sha256: str
    format: str
    device: dict[str, Any]
    emulated: bool
    target: str | None
    tolerance: float
    horizon: int  # model steps
    leads: int  # lead times compared (window models: steps x rows per step)
    variables: tuple[str, ...]
    passed: bool
    verdict: str
    rows: dict[str, Row]  # ROWS -> metrics (quantized_vs_truth / float_vs_truth absent without truth)
    latency_ms: dict[str, float]  # n, min, p50, p90, p99, mean, max over calls after the first
    latency_ms_first: float | None
    latency_ms_init: float | None
    peak_rss_bytes: int | None
    batch: int = 1  # contexts per model call on the device
    runtime: dict[str, Any]
    machine: str
    cpu: str
    python: str
    contexts: ContextsInfo
    seconds: float
    notes: tuple[str, ...] = ()


def artifact_format(path: Path, declared: str | None = None) -> str:
    """The artifact's runtime: as declared, else as its convert.json says, else from its suffix.

    Raises:
        BadInputError: none of these tells.
    """
    if declared:
        RUNTIMES.get(declared)
        return declared
    conv = path.parent / "convert.json"
    if conv.is_file():
        try:
            info = json.loads(conv.read_text())
            if isinstance(info, dict) and info.get("artifact") == path.name and info.get("format") in RUNTIMES:
                return str(info["format"])
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            pass
    rt = by_artifact(path)
    if rt is None:
        raise BadInputError(f"cannot tell the format of '{path}'; pass --format {RUNTIMES.help()}")
    return rt.name


def validate_artifact(path: Path, fmt: str) -> None:
    """Parse the artifact on the host first, so a corrupted file is a clear error, not a device crash."""
    if not path.is_file():
        raise BadInputError(f"artifact '{path}' does not exist" if not path.exists() else f"artifact '{path}' is not a file")
    try:
        RUNTIMES.get(fmt).validate(path)
    except BadInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - every runtime has its own parse error types
        raise BadInputError(
            f"artifact '{path}' is not a valid {fmt} model ({type(exc).__name__}: {str(exc).strip()[:200]}); reconvert it"
        ) from None


def job_folder(ref: Reference, artifact: Path, fmt: str, work: Path, facts: dict[str, Any]) -> None:
    """The folder a device runs: driver, companions, artifact, job.json and inputs.npz."""
    from .. import ondevice

    here = Path(ondevice.__file__).parent
    for f in ("driver.py", "step.py", "runners.py"):
        shutil.copy(here / f, work / f)
    shutil.copy(artifact, work / artifact.name)
    rt = RUNTIMES.get(fmt)
    spec = ref.meta.spec
    io = io_description(ref.meta)
    job = {
        "artifact": artifact.name,
        "format": fmt,
        "horizon": ref.horizon,
        "mode": spec.mode,
        "pairs": [list(p) for p in spec.pairs],
        "increment": spec.increment,
        "output_slice": spec.output_slice,
        "window_form": spec.window_form,
        "threads": 1,
        "batch": ref.meta.batch or 1,
        **io,
        **rt.job(artifact, io, facts),
    }
    (work / "job.json").write_text(json.dumps(job))
    arrays: dict[str, Any] = {f"ctx__{k}": v for k, v in ref.contexts.items()} | {f"static__{k}": v for k, v in ref.statics.items()}
    arrays |= {f"forcing__{k}": v for k, v in ref.forcings.items()}  # per step [K, T, ...]: the device needs no timestamps
    np.savez(work / "inputs.npz", **arrays)


def check(
    artifact: Path,
    reference: Reference,
    device: Device,
    tolerance: float,
    target: str | None = None,
    fmt: str | None = None,
    facts: dict[str, Any] | None = None,
    validated: bool = False,
) -> tuple[CheckResult, dict[str, np.ndarray]]:
    """Run ``artifact`` on ``device`` from the reference's contexts and compare. Returns the result
    and the device's trajectories (pair output -> [T, K, ...]).

    Args:
        facts: what conversion measured (convert.json ``facts`` plus ``arena_bytes``), reused by the job.

    Raises:
        BadInputError: a missing or corrupted artifact; DeviceError: the device could not run it.
    """
    t0 = time.perf_counter()
    artifact = Path(artifact)
    fmt = artifact_format(artifact, fmt)
    if not validated:  # the CLI parses the artifact first, before it builds a reference
        validate_artifact(artifact, fmt)
    from ..core.files import clean_stale, make_work_dir, pause_point

    clean_stale(tempfile.gettempdir(), "edgetqs-check-")  # job folders of killed checks
    work = make_work_dir(tempfile.gettempdir(), "edgetqs-check-")
    try:
        job_folder(reference, artifact, fmt, work, facts or {})
        pause_point("check_job_ready")  # test hook: a kill -9 here leaves the job folder for the next check to clean
        device.run_job(work, RUNTIMES.get(fmt).device_packages)
        try:
            info = json.loads((work / "result.json").read_text())
            with np.load(work / "result.npz") as got_npz:
                got = {k[len("traj__") :]: got_npz[k] for k in got_npz.files}
        except (OSError, ValueError, KeyError) as exc:
            raise BadInputError(f"device '{device.name}' returned unreadable results ({type(exc).__name__}: {exc})") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    spec = reference.meta.spec
    outs = [o for _, o in spec.pairs]
    q = np.concatenate([canonical(got[o], spec.mode, spec.channel_axis) for o in outs], axis=2)
    f = np.concatenate([canonical(reference.float_traj[o], spec.mode, spec.channel_axis) for o in outs], axis=2)
    spread = np.asarray(reference.meta.spread, dtype=np.float64)
    if spread.shape[0] != f.shape[2]:
        raise BadInputError(f"the reference holds {spread.shape[0]} variable spreads for {f.shape[2]} variables; rebuild it")
    clim = np.asarray(reference.meta.climatology, dtype=np.float64)
    rows = {"quantized_vs_float": row_metrics(q, f, spread, tolerance, clim)}
    if reference.truth is not None:
        tr = np.concatenate([canonical(reference.truth[o], spec.mode, spec.channel_axis) for o in outs], axis=2)
        rows["quantized_vs_truth"] = row_metrics(q, tr, spread, tolerance, clim)
        rows["float_vs_truth"] = row_metrics(f, tr, spread, tolerance, clim)
    variables = tuple(reference.meta.variables)
    if len(variables) != f.shape[2]:
        variables = tuple(f"var{i}" for i in range(f.shape[2]))
    main = rows["quantized_vs_float"]
    leads = f.shape[0]
    if main.first_nonfinite_lead is not None:
        passed, verdict = False, f"FAIL: the quantized rollout produced NaN/Inf at lead {main.first_nonfinite_lead} of {leads}"
    elif main.divergence_lead is not None:
        passed, verdict = (
            False,
            (
                f"FAIL: the quantized rollout leaves the float trajectory at lead {main.divergence_lead} of {leads} "
                f"(normalised RMSE {main.nrmse_by_lead[main.divergence_lead - 1]:.3g} > tolerance {tolerance:g})"
            ),
        )
    else:
        worst = max((v for v in main.nrmse_by_lead if v is not None), default=0.0)
        passed, verdict = (
            True,
            f"PASS: the quantized rollout stays within {tolerance:g} of the float trajectory for all {leads} leads (worst normalised RMSE {worst:.3g})",
        )
    notes = []
    if device.emulated:
        notes.append("latency was measured under qemu user-mode emulation: it says nothing about a real board's speed")
    if "float_vs_truth" not in rows:
        notes.append("no truth after the contexts (premade or spun-up contexts): only quantized vs float")
    res = CheckResult(
        edgetqs_version=edgetqs_version(),
        artifact=artifact.name,
        artifact_sha256=hashlib.sha256(artifact.read_bytes()).hexdigest(),
        format=fmt,
        device=device.summary(),
        emulated=device.emulated,
        target=target,
        tolerance=tolerance,
        horizon=reference.horizon,
        leads=leads,
        variables=variables,
        passed=passed,
        verdict=verdict,
        rows={k: Row(**asdict(v)) for k, v in rows.items()},
        latency_ms=info.get("latency_ms", {}),
        latency_ms_first=info.get("latency_ms_first"),
        latency_ms_init=info.get("latency_ms_init"),
        peak_rss_bytes=info.get("peak_rss_bytes"),
        batch=int(info.get("batch", 1)),
        runtime=info.get("runtime", {}),
        machine=info.get("machine", ""),
        cpu=info.get("cpu", ""),
        python=info.get("python", ""),
        contexts=reference.meta.contexts,
        seconds=time.perf_counter() - t0,
        notes=tuple(notes),
    )
    return res, got
