"""Build: score -> plan -> convert -> check -> report in one go, written as one bundle directory.

    dist/<model>-<target>/
        <artifact>  scores.json  plan.json  convert.json  check.json  reference.npz  manifest.json  report.html

Scores depend only on (model, contexts, probe settings), so they are cached under that key
(`score_cached`): a second build of the same project for another target or budget runs no sweep.
The bundle is assembled in a hidden sibling folder and renamed into place only when everything
succeeded; an error or Ctrl-C removes the partial folder, so no half bundle ever carries the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import BadInputError, EdgetqsError

MANIFEST_VERSION = 1


def cache_dir() -> Path:
    return Path(os.environ.get("EDGETQS_CACHE_DIR", Path.home() / ".cache" / "edgetqs")).expanduser() / "scores"


def contexts_hash(contexts) -> str:
    h = hashlib.sha256()
    for a in contexts.arrays:
        h.update(str(a.shape).encode() + str(a.dtype).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    for k in sorted(contexts.statics):
        v = np.ascontiguousarray(contexts.statics[k])
        h.update(k.encode() + str(v.shape).encode())
        h.update(v.tobytes())
    return h.hexdigest()


def score_key(model, spec, contexts, settings) -> str:
    blob = json.dumps({"model": model.sha256, "contexts": contexts_hash(contexts), "settings": asdict(settings), "spec": spec.to_dict()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def score_cached(model, spec, contexts, settings, force: bool = False, progress=None, notes=()) -> tuple[object, bool, Path]:
    """(Scores, whether they came from the cache, cache file). ``force`` recomputes and overwrites."""
    from .tqs import Scores, run_sweep

    path = cache_dir() / f"{score_key(model, spec, contexts, settings)[:32]}.json"
    if path.exists() and not force:
        try:
            return Scores.load(path), True, path
        except EdgetqsError:
            pass  # a stale or damaged cache entry is recomputed
    scores = run_sweep(model, spec, contexts, settings, progress=progress, notes=tuple(notes))
    path.parent.mkdir(parents=True, exist_ok=True)
    scores.save(path)
    return scores, False, path


@dataclass(frozen=True)
class BuildResult:
    bundle: Path
    model: str
    target: str
    format: str
    device: str
    passed: bool
    verdict: str
    scores_cached: bool
    seconds: float
    stage_seconds: dict
    manifest: dict
    notes: tuple[str, ...] = field(default=())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions(conv: dict, chk: dict) -> dict:
    import importlib.metadata as md

    from . import __version__

    v = {"edgetqs": __version__, **conv.get("versions", {})}
    for pkg in ("numpy", "onnx", "onnxruntime", "scipy"):
        try:
            v.setdefault(pkg, md.version(pkg))
        except md.PackageNotFoundError:
            pass
    rt = chk.get("runtime", {})
    if rt:
        v[f"device runtime ({rt.get('name')})"] = rt.get("version")
    return v


def pick_device(target, name: str | None, fmt: str):
    """The device to check on: the user's, else the target's default; an emulator that is not set up
    falls back on the host, with a note that says so."""
    from .devices import find_device

    if name:
        return find_device(name), None
    dev = find_device(target.default_device or "local")
    if fmt == "tflm" and dev.kind == "qemu":  # no aarch64 tflite-micro wheel: the host interpreter is the MCU runtime
        return find_device("local"), f"TFLite-Micro runs in the host's tflite-micro interpreter (no MCU firmware can be built here), not on {dev.name}"
    ok, why = dev.ready()
    if not ok:
        return find_device("local"), f"the target's device '{dev.name}' is not ready ({why}); checked on the host instead"
    return dev, None


def build(model_path: Path | None = None, target: str = "raspberrypi", *, device: str | None = None, budget: str | None = None,
          ratio: float | None = None, fmt: str | None = None, output: Path = Path("dist"), project: Path | None = None,
          force: bool = False, refine: bool = True, k: int | None = None, contexts_path: Path | None = None, overwrite: bool = True,
          log: Callable[[str], None] = print, progress=None) -> BuildResult:
    """Run the whole pipeline and write ``output/<model>-<target>/``.

    Args:
        model_path: the ONNX model (default: the project's).
        target: target name or .toml path; decides runtime, format, budget, horizon and tolerance.
        device: where to check (default: the target's device; the host when that is not set up).
        budget, ratio: weight budget (``600KB``) or fraction of fp32 (default: the target's budget).
        fmt: artifact format (default: the format of the target's first runtime).
        force: rescore even when cached scores exist.
        refine: measure candidate plans on the scoring contexts and keep the best (`edgetqs.refine`).

    Raises:
        InfeasibleBudgetError: before any conversion, with the smallest feasible size.
        EdgetqsError: any stage's error; nothing is left under the bundle's name.
    """
    from .check import check, contexts_with_truth, make_reference, plot_check
    from .convert import FORMATS, convert
    from .inputs import resolve
    from .plan import PlanOptions, make_plan, parse_size, pareto
    from .project import find_project, load_project
    from .targets import find_target

    t_all = time.perf_counter()
    stages: dict[str, float] = {}
    proj = load_project(project) if project else find_project()
    tg = find_target(target)
    runtime = None
    if fmt is None:
        runtime = tg.runtimes[0]
        fmt = runtime
    elif fmt not in FORMATS:
        raise BadInputError(f"format '{fmt}'; expected one of {', '.join(FORMATS)}")
    runtime = runtime or fmt
    if runtime not in tg.runtimes:
        raise BadInputError(f"target '{tg.name}' runs {', '.join(tg.runtimes)}, not {runtime}; pick --format from those")
    if budget and ratio:
        raise BadInputError("give --budget or --ratio, not both")

    inp = resolve(model_path, proj, contexts_path=contexts_path, k=k)
    model = inp.model
    notes: list[str] = list(inp.notes)
    from .tqs import ProbeSettings

    settings = ProbeSettings.from_config(dict(proj.score) if proj and model_path is None else {})
    name = f"{model.name}-{tg.name}"
    out = Path(output)
    final = out / name
    if final.exists() and not overwrite:
        raise BadInputError(f"{final} exists; pass --overwrite to replace it")

    # 1. score (cached)
    t = time.perf_counter()
    log(f"[1/5] score: {len(model.weights)} weights, {inp.contexts.k} contexts")
    scores, cached, cpath = score_cached(model, inp.spec, inp.contexts, settings, force=force, progress=progress, notes=inp.notes)
    stages["score"] = time.perf_counter() - t
    log(f"      {'reused cached scores' if cached else 'swept'} ({len(scores.groups)} groups, T={scores.horizon}) {cpath}")

    # 2. plan (an infeasible budget stops here, before any conversion)
    t = time.perf_counter()
    opts = PlanOptions(runtime=runtime, budget_bytes=parse_size(budget) if budget else None, ratio=ratio)
    if refine:
        from .refine import refine as run_refine

        plan, _ = run_refine(scores, model, tg, opts, inp.spec, inp.contexts)
        notes.append(plan.notes[-1])
    else:
        plan = make_plan(scores, model, tg, opts)
    try:
        front = pareto(scores, model, tg, opts, 8)
    except EdgetqsError:
        front = []
    stages["plan"] = time.perf_counter() - t
    log(f"[2/5] plan for {tg.name}/{runtime}: {plan.weight_bytes:,} of {plan.budget_bytes:,} weight bytes (fp32 {plan.fp32_bytes:,}), "
        f"predicted error {plan.predicted_error if plan.predicted_error is None else f'{plan.predicted_error:.3g}'}")

    out.mkdir(parents=True, exist_ok=True)
    work = out / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    # SIGTERM behaves like Ctrl-C: the partial bundle is removed on the way out
    prev = signal.signal(signal.SIGTERM, signal.default_int_handler) if _main_thread() else None
    try:
        scores.save(work / "scores.json")
        plan.save(work / "plan.json")

        # 3. convert
        t = time.perf_counter()
        log(f"[3/5] convert to {fmt}")
        conv = convert(model, plan, fmt, work / "convert", inp.contexts, inp.spec)
        for f in (work / "convert").iterdir():
            os.replace(f, work / f.name)
        (work / "convert").rmdir()
        stages["convert"] = time.perf_counter() - t
        log(f"      {conv.artifact}: {conv.weight_bytes:,} weight bytes, {conv.file_bytes:,} file bytes, read-back "
            f"{'matches' if conv.all_match else 'DIFFERS'}" + (f", arena {conv.arena_bytes:,} B" if conv.arena_bytes else ""))

        # 4. check
        t = time.perf_counter()
        dev, why = pick_device(tg, device, fmt)
        if why:
            notes.append(why)
            log(f"      note: {why}")
        log(f"[4/5] check on {dev.name} ({dev.description or dev.kind}): {tg.validation_horizon} steps, tolerance {tg.validation_tolerance:g}")
        ctx = contexts_with_truth(inp, tg.validation_horizon)
        ref = make_reference(model, inp.spec, ctx, tg.validation_horizon)
        ref.save(work / "reference.npz")
        chk, _ = check(work / conv.artifact, ref, dev, tg.validation_tolerance, target=tg.name, fmt=fmt, arena_bytes=conv.arena_bytes)
        chk = replace(chk, notes=chk.notes + tuple(notes))  # the build's notes travel in check.json (and so the report)
        chk.save(work / "check.json")
        stages["check"] = time.perf_counter() - t
        log(f"      {chk.verdict}")

        # 5. report + manifest
        t = time.perf_counter()
        from .report import write_report

        figs = work / ".figures"
        figs.mkdir()
        plot_check(chk, figs / "check.png")
        write_report(work / "report.html", model=model, target=tg, scores=scores, plan=plan, front=front, conv=conv, chk=chk,
                     figures=figs, cached=cached)
        shutil.rmtree(figs)
        stages["report"] = time.perf_counter() - t
        manifest = {
            "schema_version": MANIFEST_VERSION, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": {"name": model.name, "sha256": model.sha256, "path": str(model.path)},
            "target": {"name": tg.name, "arch": tg.arch, "file": tg.path, "weight_budget_bytes": tg.weight_budget_bytes,
                       "ram_budget_bytes": tg.ram_budget_bytes, "validation_horizon": tg.validation_horizon,
                       "validation_tolerance": tg.validation_tolerance},
            "budget_bytes": plan.budget_bytes, "format": fmt, "runtime": runtime, "artifact": conv.artifact,
            "device": {**dev.to_dict(), "emulated": dev.emulated},
            "sizes": {"weight_bytes": conv.weight_bytes, "file_bytes": conv.file_bytes, "fp32_weight_bytes": conv.fp32_weight_bytes,
                      "fp32_file_bytes": conv.fp32_file_bytes, "arena_bytes": conv.arena_bytes, "peak_rss_bytes": chk.peak_rss_bytes},
            "passed": chk.passed, "verdict": chk.verdict, "scores_cached": cached, "versions": _versions(conv.to_dict(), chk.to_dict()),
            "stage_seconds": stages, "notes": notes,
            "files": {f.name: {"sha256": _sha256(f), "bytes": f.stat().st_size} for f in sorted(work.iterdir()) if f.is_file()},
        }
        from .jsonfile import write_json

        write_json(work / "manifest.json", manifest)
        # publish: the old bundle (if any) steps aside, the new one takes the name, the old one goes
        old = out / f".{name}.old-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(work, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if prev is not None:
            signal.signal(signal.SIGTERM, prev)
    total = time.perf_counter() - t_all
    log(f"[5/5] bundle {final} ({'PASS' if chk.passed else 'FAIL'}) in {total:.1f} s")
    return BuildResult(final, model.name, tg.name, fmt, dev.name, chk.passed, chk.verdict, cached, total, stages, manifest, tuple(notes))


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def verify_manifest(bundle: Path) -> list[str]:
    """Files whose sha256 or size differ from the manifest, or that are missing or unlisted."""
    m = json.loads((bundle / "manifest.json").read_text())
    bad = []
    listed = m["files"]
    for name, info in listed.items():
        p = bundle / name
        if not p.exists():
            bad.append(f"{name}: missing")
        elif p.stat().st_size != info["bytes"] or _sha256(p) != info["sha256"]:
            bad.append(f"{name}: changed")
    for p in bundle.iterdir():
        if p.name not in listed and p.name != "manifest.json":
            bad.append(f"{p.name}: not in the manifest")
    return bad
