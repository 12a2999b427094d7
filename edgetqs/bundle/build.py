"""Build: score -> plan -> convert -> check -> report in one go, written as one bundle directory.

    dist/<model>-<target>/
        <artifact>  scores.json  plan.json  convert.json  check.json  reference.npz  manifest.json  report.html

Scores depend only on (model, contexts, probe settings), so they come from the score cache
(`edgetqs.sensitivity.cache`): a second build of the same project for another target or budget runs
no sweep. The bundle is assembled in a private folder and published only when everything succeeded
(`edgetqs.bundle.publish`), so no half bundle ever carries the final name.

Test pause points (``EDGETQS_TEST_PAUSE_AT``, see `edgetqs.core.files.pause_point`): ``build_scored``,
``build_planned`` (no file written yet), then inside the work folder ``build_converted``, ``build_checked``
and ``build_reported`` (manifest written, not yet published); publish adds its own (`edgetqs.bundle.publish`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.files import pause_point, write_json
from ..core.inputs import resolve
from ..core.project import ScoreConfig, merged, open_project
from ..core.results import edgetqs_version
from ..errors import BadInputError, Hint
from ..runtimes import RUNTIMES
from .manifest import Manifest, file_entries
from .publish import validate_name

Log = Callable[[str], None]


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
    stage_seconds: dict[str, float]
    manifest: Manifest
    notes: tuple[str, ...] = field(default=())


def _versions(conv: Any, chk: Any) -> dict[str, str | None]:
    import importlib.metadata as md

    v: dict[str, str | None] = {"edgetqs": edgetqs_version(), **conv.versions}
    for pkg in ("numpy", "onnx", "onnxruntime", "scipy", "pydantic"):
        with contextlib.suppress(md.PackageNotFoundError):
            v.setdefault(pkg, md.version(pkg))
    rt = chk.runtime
    if rt:
        v[f"device runtime ({rt.get('name')})"] = rt.get("version")
    return v


def pick_device(target: Any, name: str | None, fmt: str, announce: Log | None = None) -> tuple[Any, str | None]:
    """The device to check on: the user's, else the target's default; an emulator that is not set up (or
    cannot run this runtime) falls back on the host, with a note that says so."""
    from ..validation.devices import find_device

    if name:
        return find_device(name, announce), None
    dev = find_device(target.default_device or "local", announce)
    rt = RUNTIMES.get(fmt)
    if dev.emulated and not rt.emulated:
        return find_device("local"), (
            f"{rt.name} runs in the host's interpreter here ({rt.description}): the emulated ARM Python "
            f"cannot run it, so it was not checked on {dev.name}"
        )
    ok, why = dev.ready()
    if not ok:
        return find_device("local"), f"the target's device '{dev.name}' is not ready ({why}); checked on the host instead"
    return dev, None


@dataclass
class _Stages:
    """What the build's stages share."""

    say: Log
    notes: list[str]
    device: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    picked: tuple[Any, str | None] | None = None  # (device, why it is not the one asked for), chosen before any work

    def time(self, stage: str, t0: float) -> None:
        self.seconds[stage] = time.perf_counter() - t0


def build(
    model: Any = None,
    target: str = "raspberrypi",
    *,
    device: str | None = None,
    budget: str | int | None = None,
    ratio: float | None = None,
    reserve: str | int | None = None,
    fmt: str | None = None,
    activations: str = "auto",
    rounding: str = "rtn",
    output: str | Path = "dist",
    project: Any = None,
    force: bool = False,
    refine: bool = True,
    refine_rollouts: int = 400,
    k: int | None = None,
    contexts: str | Path | None = None,
    span: str | None = None,
    pick: str | None = None,
    overwrite: bool = True,
    score: ScoreConfig | dict[str, Any] | None = None,
    fill: str | None = None,
    log: Log | None = None,
    progress: Any = None,
) -> BuildResult:
    """Run the whole pipeline and write ``output/<model>-<target>/``.

    Args:
        model: the ONNX model (default: the project's).
        target: target name or .toml path; decides runtime, format, budget, horizon and tolerance.
        device: where to check (default: the target's device; the host when that is not set up).
        budget, ratio: weight budget (``600KB``) or fraction of fp32 (default: the target's budget).
        reserve: bytes of the budget the plan leaves unspent for what convert adds (a centred window's level weight;
            convert's note names it).
        fmt: artifact format (default: the target's first runtime).
        activations: float | int8 | int16 | dynamic | auto (the target's first for the runtime): planned and converted.
        rounding: rtn or gptq (layer-wise error compensation, calibrated on the build's contexts).
        force: rescore even when cached scores exist.
        refine: re-score the plan in context on the scoring contexts (`edgetqs.allocation.rescore`).
        refine_rollouts: the re-scoring's rollout budget.
        span, pick: where the contexts are drawn from and how (as `edgetqs.core.inputs.resolve`).
        score: probe settings that beat the project's ``[score]`` table.
        fill: fill NaN/Inf in the contexts (``ffill``, ``interpolate``, ``mean``; default: the project's) instead of refusing them.

    Raises:
        InfeasibleBudgetError: before any conversion, with the smallest feasible size.
        EdgetqsError: any stage's error; nothing is left under the bundle's name.
    """
    from ..allocation.plan import PlanOptions, parse_reserve, parse_size
    from ..allocation.planner import plan_stage
    from ..allocation.targets import find_target
    from ..sensitivity.cache import reuse_line, score_cached
    from ..sensitivity.scores import ProbeSettings

    st = _Stages(log or (lambda m: None), [], device)
    t_all = time.perf_counter()
    proj = open_project(project)
    tg = find_target(str(getattr(target, "path", None) or target), st.say)
    fmt, runtime = _format(tg, fmt)
    if budget is not None and ratio is not None:
        raise BadInputError("give --budget or --ratio, not both")
    # the same settings and contexts as `edgetqs score` (project file, then options), so both find one cache entry
    cfg = merged(proj.score if proj else ScoreConfig(), score)
    settings = ProbeSettings.from_config(cfg)
    opts = PlanOptions(
        runtime=runtime,
        activations=activations,
        rounding=rounding,
        budget_bytes=parse_size(str(budget)) if budget is not None else None,
        ratio=ratio,
        reserve_bytes=parse_reserve(reserve),
        include=settings.include,
        exclude=settings.exclude,
    )
    opts.check()  # bad budgets fail before the sweep
    from ..allocation.rescore import search_settings

    search = search_settings(refine_rollouts)
    from ..sensitivity.backends import check_backend

    check_backend(cfg.backend, cfg.workers, cfg.address)
    inp = resolve(
        model,
        proj,
        contexts=contexts,
        k=k,
        span=span,
        pick=pick,
        seed=settings.seed,
        fill=fill,
        include=settings.include,
        exclude=settings.exclude,
    )
    m = inp.model
    st.notes += inp.notes
    name, out = f"{m.name}-{tg.name}", Path(output)
    try:
        validate_name(name)
    except ValueError:
        raise BadInputError(
            f"the bundle would be named {name!r} (model name '{m.name}', target '{tg.name}'), which is not a plain folder name; "
            "rename the model file or set `name` in edgetqs.toml"
        ) from None
    if (out / name).exists() and not overwrite:
        raise BadInputError(f"{out / name} exists; pass overwrite=True to replace it")
    if out.exists() and not out.is_dir():
        raise BadInputError(f"output '{out}' is not a folder; give a folder for the bundles")
    st.picked = pick_device(tg, device, fmt, st.say)  # a bad --device fails here, before any work

    t = time.perf_counter()
    st.say(f"[1/5] score: {len(m.weights)} weights, {inp.contexts.k} contexts")
    for n in inp.notes:  # the rollout, the contexts drawn, values filled
        st.say(f"      {n}")

    def projection() -> None:  # before a sweep (not on a cache hit): what it will cost, and how to cut it
        from ..sensitivity.projection import ADVISE_ABOVE_S, fmt_seconds, project_sweep

        n_search = max(1, round(max(inp.contexts.k, search.contexts) * (1 - search.guard_share)))  # the search's contexts, at most
        from ..sensitivity.backends import local_default

        workers = cfg.workers or 1
        if cfg.workers == 0 and cfg.backend is None and cfg.address is None:
            workers = local_default(m.n_params)[1] or 1
        elif cfg.workers == 0:
            workers = os.cpu_count() or 1
        pj = project_sweep(m, inp.spec, inp.contexts, settings, refine_rollouts if refine else 0, n_search, workers)
        st.say(f"      {pj.describe()}")
        for a in pj.advice():
            st.say(f"      over {fmt_seconds(ADVISE_ABOVE_S)}; to cut it: {a}")

    scores, cached, cpath = score_cached(
        m,
        inp.spec,
        inp.contexts,
        settings,
        force=force,
        progress=progress,
        notes=inp.notes,
        log=st.say,
        before_sweep=projection,
        workers=cfg.workers,  # [score] workers, backend and address say where the sweep runs (checkpointed: a rerun resumes)
        backend=cfg.backend,
        address=cfg.address,
    )
    st.time("score", t)
    st.say("      " + (reuse_line(cpath, scores) if cached else f"swept ({len(scores.groups)} groups, T={scores.horizon}) {cpath}"))
    pause_point("build_scored")

    t = time.perf_counter()  # an infeasible budget stops here, before any conversion

    plan = plan_stage(
        scores,
        m,
        tg,
        opts,
        spec=inp.spec,
        contexts=inp.contexts,
        refine=refine,
        pareto_n=8,
        rescore=search,
        log=st.say,
    )
    if refine:
        st.notes.append(plan.notes[-1])
    st.time("plan", t)
    pe = "unbounded" if plan.predicted_error is None else f"{plan.predicted_error:.3g}"
    st.say(
        f"[2/5] plan for {tg.name}/{runtime}: {plan.weight_bytes:,} of {plan.budget_bytes:,} weight bytes (fp32 {plan.fp32_bytes:,}), "
        f"predicted error {pe}"
    )
    pause_point("build_planned")
    chk, dev, manifest = _assemble(st, inp, tg, fmt, runtime, scores, cached, plan, out, name)
    total = time.perf_counter() - t_all
    st.say(f"[5/5] bundle {out / name} ({'PASS' if chk.passed else 'FAIL'}) in {total:.1f} s")
    return BuildResult(
        out / name, m.name, tg.name, fmt, dev.name, chk.passed, chk.verdict, cached, total, st.seconds, manifest, tuple(st.notes)
    )


def _format(tg: Any, fmt: str | None) -> tuple[str, str]:
    """(artifact format, plan runtime) for the target: the format asked for, else the target's first runtime."""
    fmt = fmt or tg.runtimes[0]
    rt = RUNTIMES.get(fmt)
    runtime = fmt if fmt in tg.runtimes else next((r for r in rt.accepts if r in tg.runtimes), None)
    if runtime is None:
        usable = [r.name for r in RUNTIMES if any(a in tg.runtimes for a in r.accepts)]
        raise BadInputError(
            f"target '{tg.name}' runs {', '.join(tg.runtimes)}, not {fmt}",
            hint=Hint("build-format", ("--format", usable[0]), say=f"use {{args}} (the target takes {', '.join(usable)})"),
        )
    return fmt, runtime


def _assemble(
    st: _Stages, inp: Any, tg: Any, fmt: str, runtime: str, scores: Any, cached: bool, plan: Any, out: Path, name: str
) -> tuple[Any, Any, Manifest]:
    """Convert, check, report and publish in a private work folder (`edgetqs.bundle.publish`): at every
    instant ``out/NAME`` holds the complete old bundle or the complete new one."""
    from .publish import new_work_dir, publish, recover

    out.mkdir(parents=True, exist_ok=True)
    recover(out, name)  # left-overs of killed builds of this bundle
    # SIGTERM behaves like Ctrl-C: the work folder is removed on the way out
    main_thread = threading.current_thread() is threading.main_thread()
    prev = signal.signal(signal.SIGTERM, signal.default_int_handler) if main_thread else None
    work: Path | None = None
    try:
        work = new_work_dir(out, name)
        scores.save(work / "scores.json", policy="refuse_existing")
        plan.save(work / "plan.json", policy="refuse_existing")
        conv = _convert(st, inp, tg, fmt, plan, work)
        pause_point("build_converted")
        chk, dev = _check(st, inp, tg, fmt, conv, work)
        pause_point("build_checked")
        t = time.perf_counter()
        from .report import write_report

        figs = work / ".figures"
        figs.mkdir()
        write_report(
            work / "report.html", model=inp.model, target=tg, scores=scores, plan=plan, conv=conv, chk=chk, figures=figs, cached=cached
        )
        shutil.rmtree(figs)
        st.time("report", t)
        manifest = _manifest(st, inp.model, tg, fmt, runtime, plan, conv, chk, dev, cached, work)
        write_json(work / "manifest.json", manifest.to_json_dict(), policy="refuse_existing")
        pause_point("build_reported")
        publish(work, out, name)
    except BaseException:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if prev is not None:
            signal.signal(signal.SIGTERM, prev)
    return chk, dev, manifest


def _convert(st: _Stages, inp: Any, tg: Any, fmt: str, plan: Any, work: Path) -> Any:
    from ..runtimes.convert import convert

    t = time.perf_counter()
    st.say(f"[3/5] convert to {fmt}")
    conv = convert(inp.model, plan, fmt, work / "convert", inp.contexts, inp.spec, target=tg)
    for f in (work / "convert").iterdir():
        os.replace(f, work / f.name)
    (work / "convert").rmdir()
    st.time("convert", t)
    st.say(
        f"      {conv.artifact}: {conv.weight_bytes:,} weight bytes, {conv.file_bytes:,} file bytes, read-back "
        f"{'matches' if conv.all_match else 'DIFFERS'}" + (f", arena {conv.arena_bytes:,} B" if conv.arena_bytes else "")
    )
    return conv


def _check(st: _Stages, inp: Any, tg: Any, fmt: str, conv: Any, work: Path) -> tuple[Any, Any]:
    from ..validation.check import check
    from ..validation.reference import contexts_with_truth, make_reference

    t = time.perf_counter()
    dev, why = st.picked or pick_device(tg, st.device, fmt, st.say)
    if why:
        st.notes.append(why)
        st.say(f"      note: {why}")
    st.say(
        f"[4/5] check on {dev.name} ({dev.description or dev.kind}): {tg.validation_horizon} steps, tolerance {tg.validation_tolerance:g}"
    )
    ref = make_reference(inp.model, inp.spec, contexts_with_truth(inp, tg.validation_horizon), tg.validation_horizon)
    ref.save(work / "reference.npz", policy="refuse_existing")
    facts = {**conv.facts, "arena_bytes": conv.arena_bytes}
    chk, _ = check(work / conv.artifact, ref, dev, tg.validation_tolerance, target=tg.name, fmt=fmt, facts=facts)
    chk = chk.model_copy(update={"notes": chk.notes + tuple(st.notes)})  # the build's notes travel in check.json (and so the report)
    chk.save(work / "check.json", policy="refuse_existing")
    st.time("check", t)
    st.say(f"      {chk.verdict}")
    return chk, dev


def _manifest(
    st: _Stages, m: Any, tg: Any, fmt: str, runtime: str, plan: Any, conv: Any, chk: Any, dev: Any, cached: bool, work: Path
) -> Manifest:
    return Manifest(
        edgetqs_version=edgetqs_version(),
        created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        model={"name": m.name, "sha256": m.sha256, "path": str(m.path)},
        target=tg.summary(),
        budget_bytes=plan.budget_bytes,
        format=fmt,
        runtime=runtime,
        artifact=conv.artifact,
        device=dev.summary(),
        sizes={
            "weight_bytes": conv.weight_bytes,
            "file_bytes": conv.file_bytes,
            "fp32_weight_bytes": conv.fp32_weight_bytes,
            "fp32_file_bytes": conv.fp32_file_bytes,
            "arena_bytes": conv.arena_bytes,
            "peak_rss_bytes": chk.peak_rss_bytes,
        },
        passed=chk.passed,
        verdict=chk.verdict,
        scores_cached=cached,
        versions=_versions(conv, chk),
        stage_seconds=st.seconds,
        notes=tuple(st.notes),
        files=file_entries(work),
    )
