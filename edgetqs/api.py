"""The Python API: one function per pipeline stage, taking paths or the objects the others return.
The command line is a thin layer over these functions, so everything it does is callable from Python.

    import edgetqs
    scores = edgetqs.score("model.onnx", "contexts.npz", horizon=12)
    plan = edgetqs.plan(scores, "model.onnx", "stm32h743", pareto=8, evaluate=True, contexts="contexts.npz")
    conv = edgetqs.convert("model.onnx", plan, "tflm", "artifacts", contexts="contexts.npz")
    result = edgetqs.check("artifacts/model.tflm.tflite", model="model.onnx", contexts="contexts.npz", target="stm32h743")
    bundle = edgetqs.build("model.onnx", "raspberrypi", contexts="contexts.npz", ratio=0.25)
    again = edgetqs.check(bundle.bundle, device="qemu-pi5")   # a bundle carries its own reference
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .core.project import Project, RolloutConfig, ScoreConfig, merged, open_project
from .errors import BadInputError, Hint

if TYPE_CHECKING:  # pragma: no cover
    from .allocation.plan import Plan
    from .allocation.targets import Target
    from .bundle.build import BuildResult
    from .core.inputs import Inputs
    from .runtimes.convert import ConvertResult
    from .sensitivity.scores import Scores
    from .validation.check import CheckResult

Log = Callable[[str], None]
DEFAULT_TOLERANCE = 0.1
DEFAULT_CHECK_HORIZON = 20


def _target(target: Any, log: Log | None = None) -> Target:
    from .allocation.targets import Target, find_target

    return target if isinstance(target, Target) else find_target(str(target), log)


def _model_arg(model: Any, example_input: Any) -> Any:
    """A path, a loaded `Model`, or a torch module (exported once with the dynamo exporter)."""
    from .core.model import Model

    if model is None or isinstance(model, (str, Path, Model)):
        return model
    if example_input is None:
        raise BadInputError("a torch module needs example_input= (a tensor with the batch axis first) to be exported")
    import tempfile

    from .core.model import export_torch, load_model

    tmp = Path(tempfile.mkdtemp(prefix="edgetqs-export-")) / "model.onnx"
    return load_model(export_torch(model, example_input, tmp))


def inputs(
    model: Any = None,
    contexts: Any = None,
    *,
    project: Any = None,
    k: int | None = None,
    span: str | None = None,
    variables: list[str] | None = None,
    spinup: bool = False,
    spinup_scale: float | None = None,
    seed: int = 0,
    rollout: RolloutConfig | dict[str, Any] | None = None,
    pick: str | None = None,
    include: tuple[str, ...] | None = None,
    exclude: tuple[str, ...] | None = None,
    fill: str | None = None,
    log: Log | None = None,
) -> Inputs:
    """The model, its rollout and the contexts, resolved from these arguments and the project file.

    ``pick``: ``even`` (contexts evenly spaced over the record or stack of windows) or ``random`` (seeded by ``seed``).
    ``fill`` (``ffill``, ``interpolate``, ``mean``; default: the project's) fills NaN/Inf in the contexts,
    which are refused otherwise (`edgetqs.core.missing`). ``include`` / ``exclude``: weight rules
    (`edgetqs.core.weights`); None: the project's."""
    from .core.inputs import resolve

    return resolve(
        model,
        open_project(project),
        contexts=contexts,
        variables=variables,
        k=k,
        span=span,
        spinup=spinup,
        spinup_scale=spinup_scale,
        seed=seed,
        rollout=rollout,
        pick=pick,
        include=include,
        exclude=exclude,
        fill=fill,
        log=log,
    )


def score(
    model: Any = None,
    contexts: Any = None,
    *,
    project: Any = None,
    k: int | None = None,
    span: str | None = None,
    variables: list[str] | None = None,
    spinup: bool = False,
    spinup_scale: float | None = None,
    rollout: RolloutConfig | dict[str, Any] | None = None,
    settings: ScoreConfig | dict[str, Any] | None = None,
    pick: str | None = None,
    strategy: str = "auto",
    fill: str | None = None,
    cache: bool = True,
    force: bool = False,
    example_input: Any = None,
    progress: Callable[[int, int], None] | None = None,
    log: Log | None = None,
    default_workers: int | None = None,
    **options: Any,
) -> Scores:
    """Score a model's quantization sensitivity with TQS.

    Args:
        model: an .onnx path, a loaded `Model`, or a torch module (with ``example_input``); default: the project's.
        contexts: a contexts file (default: the project's; none: data-free spin-up from noise).
        pick: how the K contexts are spread over the record: ``even`` or ``random`` (seeded by the probe seed).
        settings / **options: probe settings (``probe``, ``horizon``, ``granularity``, ``ladder``, ``workers``...,
            the keys of ``[score]`` in edgetqs.toml); they beat the project file. ``backend`` (``serial``,
            ``processes``, ``ray``) and ``address`` (a Ray cluster) say where the sweep runs; all give the same scores.
        cache: reuse (and fill) the score cache that `build` uses for the same model, contexts and settings; a
            sweep that is computed checkpoints its finished groups there, so the same call after a kill resumes it.
        force: rescore even when the cache holds these scores.
        fill: fill NaN/Inf in the contexts (``ffill``, ``interpolate``, ``mean``) instead of refusing them.
        default_workers: ``workers`` when neither it nor ``backend`` is set anywhere (the command line passes 0:
            a process per core for large models, see `edgetqs.sensitivity.sweep.run_sweep`).

    Raises:
        EdgetqsError: bad input (named), a diverging float rollout, ...
    """
    from .sensitivity.cache import reuse_line, score_cached
    from .sensitivity.scores import ProbeSettings
    from .sensitivity.sweep import STRATEGIES, run_sweep

    if strategy not in STRATEGIES:  # checked here too: a cache hit never reaches the sweep
        raise BadInputError(f"strategy '{strategy}'; expected one of {', '.join(STRATEGIES)}")
    proj = open_project(project)
    cfg = merged(merged(proj.score if proj else ScoreConfig(), settings), _score_config(options))
    from .sensitivity.backends import check_backend

    check_backend(cfg.backend, cfg.workers, cfg.address)
    probe = ProbeSettings.from_config(cfg)
    inp = inputs(
        _model_arg(model, example_input),
        contexts,
        project=proj,
        k=k,
        span=span,
        variables=variables,
        spinup=spinup,
        spinup_scale=spinup_scale,
        seed=probe.seed,
        rollout=rollout,
        pick=pick,
        include=probe.include,
        exclude=probe.exclude,
        fill=fill,
    )
    if log:
        for n in inp.notes:  # the rollout, the contexts drawn, values filled
            log(n)
    workers = cfg.workers if cfg.workers is not None or cfg.backend is not None else default_workers
    if cache:
        scores, cached, path = score_cached(
            inp.model,
            inp.spec,
            inp.contexts,
            probe,
            force=force,
            progress=progress,
            notes=inp.notes,
            workers=workers,
            strategy=strategy,
            log=log,
            backend=cfg.backend,
            address=cfg.address,
        )
        if cached and log:
            log(reuse_line(path, scores))
        return scores
    return run_sweep(
        inp.model,
        inp.spec,
        inp.contexts,
        probe,
        workers=workers,
        progress=progress,
        notes=inp.notes,
        strategy=strategy,
        backend=cfg.backend,
        address=cfg.address,
        log=log,
    )


def _score_config(options: dict[str, Any]) -> ScoreConfig:
    from pydantic import ValidationError

    from .core.results import describe_validation_error

    try:
        return ScoreConfig.model_validate({k: (tuple(v) if isinstance(v, list) else v) for k, v in options.items()})
    except ValidationError as exc:
        raise BadInputError(describe_validation_error(exc, "score settings")) from None


def plan(
    scores: Any,
    model: Any = None,
    target: Any = "raspberrypi",
    *,
    project: Any = None,
    pareto: int | None = None,
    evaluate: bool = False,
    refine: bool = False,
    refine_rollouts: int = 400,
    contexts: Any = None,
    k: int | None = None,
    span: str | None = None,
    pick: str | None = None,
    lowest: str | int | None = None,
    pins: list[str] | tuple[str, ...] = (),
    budget: str | int | None = None,
    reserve: str | int | None = None,
    include: list[str] | tuple[str, ...] = (),
    exclude: list[str] | tuple[str, ...] = (),
    fill: str | None = None,
    log: Log | None = None,
    **options: Any,
) -> Plan:
    """Bits per tensor for ``target``.

    Args:
        scores: a `Scores` or a scores.json path.
        model: the scored model (default: the project's, then the path in the scores).
        pareto: also plan at this many budgets from the smallest feasible to fp32 (stored in ``plan.pareto``).
        evaluate: measure the plan (and the Pareto points) by simulated quantization on the contexts.
        refine: re-score the plan in context (`edgetqs.allocation.rescore`): each tensor's damage measured with the
            rest of the plan quantized, the knapsack re-solved, kept when held-back contexts improve too.
        refine_rollouts: the re-scoring's rollout budget.
        lowest: lowest allowed tier (``int4`` or 4).
        pins: ``NAME=PRECISION`` or ``re:REGEX=PRECISION`` rules.
        budget: ``600KB``, ``1.5MiB`` or bytes.
        reserve: bytes of the budget the plan leaves unspent, for what convert adds on its own (a window centred for
            dynamic range stores a level weight; convert's note names the reserve it needs).
        include, exclude: weight rules added to those the scores were made with: ``exclude`` keeps more tensors
            exact (constants); ``include`` can only name tensors the scores hold (else: rescore with it).
        contexts, k, span, fill: the contexts for ``evaluate``, ``refine`` and ``rounding="gptq"`` (refused otherwise:
            they would not be used).
        **options: other `edgetqs.allocation.plan.PlanOptions` fields (runtime, ratio, objective, allocator,
            keep_fp32_share, rounding).
    """
    from pydantic import ValidationError

    from .allocation.plan import PlanOptions, parse_pin, parse_reserve, parse_size
    from .allocation.planner import plan_stage
    from .core.inputs import rollout_config
    from .core.model import Model, load_model
    from .core.quantize import parse_precision
    from .core.results import describe_validation_error
    from .sensitivity.scores import Scores

    if pareto is not None and not 2 <= pareto <= 1000:  # before any work (the front is planned last)
        raise BadInputError(f"--pareto {pareto}; expected 2 to 1000 budgets")
    s = scores if isinstance(scores, Scores) else Scores.load(scores)
    proj = open_project(project)
    inc = tuple(dict.fromkeys((*s.settings.include, *include)))
    exc = tuple(dict.fromkeys((*s.settings.exclude, *exclude)))
    if isinstance(model, Model):
        m = model.select(inc, exc)
    else:
        mpath = model or (proj.model if proj else None) or (Path(s.model_path) if s.model_path else None)
        if mpath is None:
            raise BadInputError("no model: pass --model (the ONNX file that was scored)")
        m = load_model(mpath, include=inc, exclude=exc)
    if s.model_sha256 == m.sha256:  # another model is refused by the planner, with advice
        from .sensitivity.cache import verify_groups

        why = verify_groups(s, m.select(s.settings.include, s.settings.exclude))  # the model as it was scored
        if why is not None:
            where = f"'{scores}'" if not isinstance(scores, Scores) else "the scores"
            raise BadInputError(f"{where} cannot be used to plan '{m.path}': {why}; score the model again with `edgetqs score`")
    tg = _target(target, log)
    lowest_bits = None if lowest is None else (int(lowest) if isinstance(lowest, int) else parse_precision(str(lowest)).bits)
    try:
        opts = PlanOptions(
            budget_bytes=parse_size(str(budget)) if budget is not None else None,
            reserve_bytes=parse_reserve(reserve),
            lowest_bits=lowest_bits,
            pins=tuple(parse_pin(p) for p in pins),
            include=inc,
            exclude=exc,
            **options,
        )
    except ValidationError as exc:
        raise BadInputError(describe_validation_error(exc, "plan options")) from None
    spec = ctx = None
    needs_contexts = evaluate or refine or opts.rounding != "rtn"
    if not needs_contexts:
        unused = [n for n, v in (("contexts", contexts), ("k", k), ("span", span), ("pick", pick), ("fill", fill)) if v is not None]
        if unused:
            raise BadInputError(
                f"{', '.join(unused)} given, but a plan reads contexts only with --evaluate, --refine or --rounding gptq; "
                "add one of those or drop them"
            )
    if needs_contexts:
        inp = inputs(
            m, contexts, project=proj, k=k, span=span, pick=pick, rollout=rollout_config(s.spec), seed=s.settings.seed, fill=fill, log=log
        )
        spec, ctx = inp.spec, inp.contexts
    from .allocation.rescore import search_settings

    return plan_stage(
        s,
        m,
        tg,
        opts,
        spec=spec,
        contexts=ctx,
        refine=refine,
        evaluate_plans=evaluate,
        pareto_n=pareto,
        rescore=search_settings(refine_rollouts),
        log=log,
    )


def convert(
    model: Any,
    plan: Any,
    fmt: str,
    out_dir: Any = "artifacts",
    *,
    contexts: Any = None,
    k: int | None = None,
    horizon: int | None = None,
    overwrite: bool = False,
    activations: str = "auto",
    activation_goal: float | None = None,
    project: Any = None,
    span: str | None = None,
    pick: str | None = None,
    fill: str | None = None,
    log: Log | None = None,
) -> ConvertResult:
    """Write and verify the artifact (a `ConvertResult`); ``plan`` is a `Plan` or a plan.json path.

    ``contexts``, ``k``, ``span`` and ``pick`` choose the host check's contexts (a GPTQ plan needs the ones it was made with);
    ``fill`` fills NaN/Inf in them (refused otherwise). ``activation_goal``: ort with int8 activations, the worst
    normalised RMSE the choice of integer activations aims at (`edgetqs.allocation.activations`; default 0.7 x the
    target's tolerance; ``math.inf`` keeps every activation int8)."""
    from .allocation.plan import Plan
    from .core.files import new_folders
    from .runtimes import RUNTIMES
    from .runtimes.convert import convert as run

    rt = RUNTIMES.get(fmt)
    if activations not in ("auto", "float", "int16", "int8", "dynamic"):
        raise BadInputError(f"activations '{activations}'; expected auto, float, int16, int8 or dynamic")
    if activations != "auto" and not rt.full_integer and not rt.integer_activations:
        raise BadInputError(
            f"--activations {activations}: {fmt} keeps float activations; ort, tflite and the full-integer formats (tflm) take an activation width"
        )
    if activation_goal is not None and (math.isnan(activation_goal) or activation_goal <= 0):
        raise BadInputError(f"--activation-goal {activation_goal}; expected a normalised RMSE above 0 (inf: every activation int8)")
    if activation_goal is not None and not rt.integer_activations:  # a float runtime choosing integer activations per op
        chooses = ", ".join(f"{r.name} ({'/'.join(a for a in r.activations if a != 'float')})" for r in RUNTIMES if r.integer_activations)
        raise BadInputError(f"--activation-goal: {fmt} does not choose activations per op; only {chooses} do")
    p = plan if isinstance(plan, Plan) else Plan.load(plan)
    _check_horizon(horizon)
    inp = inputs(
        model,
        contexts,
        project=project,
        k=k,
        span=span,
        pick=pick,
        fill=fill,
        log=log,
        include=p.options.include,
        exclude=p.options.exclude,
    )
    from .core.files import Policy, preflight
    from .runtimes.convert import artifact_name

    for name in (artifact_name(inp.model, fmt), "convert.json"):  # known before the conversion, not after it
        preflight(Path(out_dir) / name, policy=Policy.REPLACE if overwrite else Policy.REFUSE_EXISTING)
    with new_folders(out_dir):
        return run(
            inp.model,
            p,
            fmt,
            Path(out_dir),
            inp.contexts,
            inp.spec,
            horizon=horizon,
            overwrite=overwrite,
            activations=activations,
            activation_goal=activation_goal,
        )


def _check_horizon(horizon: int | None) -> None:
    from .allocation.targets import MAX_VALIDATION_HORIZON

    if horizon is not None and not 1 <= horizon <= MAX_VALIDATION_HORIZON:
        raise BadInputError(f"horizon {horizon}; expected 1..{MAX_VALIDATION_HORIZON:,} steps")


def check(
    artifact: Any,
    *,
    device: str = "local",
    reference: Any = None,
    model: Any = None,
    contexts: Any = None,
    k: int | None = None,
    span: str | None = None,
    pick: str | None = None,
    horizon: int | None = None,
    target: Any = None,
    tolerance: float | None = None,
    fmt: str | None = None,
    project: Any = None,
    output: Any = None,
    write: bool = True,
    fill: str | None = None,
    log: Log | None = None,
) -> CheckResult:
    """Roll ``artifact`` out on ``device`` and compare with the float trajectory (a `CheckResult`).

    ``artifact`` may be a bundle folder (its artifact and reference.npz are used: no float model needed).
    The reference is otherwise a reference.npz path, or computed from ``model`` and ``contexts``. With
    ``write``, check.json, check.png (and a new reference.npz) go to ``output``: by default the artifact's
    folder, or ``./check-<bundle>-<device>/`` for a bundle, whose manifest must stay valid.
    """
    import json
    import math

    from .core.inputs import parse_span
    from .validation.check import artifact_format, validate_artifact
    from .validation.check import check as run
    from .validation.devices import find_device
    from .validation.reference import Reference, contexts_with_truth, make_reference

    a = Path(artifact)
    if a.is_dir() and (a / "manifest.json").is_file():
        from .bundle.manifest import Manifest

        a = a / Manifest.load(a / "manifest.json").artifact
    dev = find_device(device, log)
    fmt = artifact_format(a, fmt)
    validate_artifact(a, fmt)  # a corrupted file fails before any work
    info: dict[str, Any] = {}
    conv = a.parent / "convert.json"
    if conv.is_file():
        try:
            raw = json.loads(conv.read_text())
            info = raw if isinstance(raw, dict) and raw.get("artifact") == a.name else {}
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            info = {}
    tname = target or info.get("target")
    tg = None
    if tname:
        try:
            tg = _target(tname, log)
        except BadInputError:
            if target:
                raise
    from .allocation.targets import MAX_TOLERANCE

    if tolerance is not None and not (math.isfinite(tolerance) and 0 < tolerance <= MAX_TOLERANCE):
        raise BadInputError(f"tolerance {tolerance}; expected a positive normalised RMSE up to {MAX_TOLERANCE:g}")
    _check_horizon(horizon)
    tol = tolerance if tolerance is not None else (tg.validation_tolerance if tg else DEFAULT_TOLERANCE)
    steps = horizon or (tg.validation_horizon if tg else DEFAULT_CHECK_HORIZON)
    in_bundle = (a.parent / "manifest.json").exists()
    if in_bundle and reference is None and (a.parent / "reference.npz").exists():
        reference = a.parent / "reference.npz"  # a bundle carries its reference: no float model needed
    outdir = Path(output) if output is not None else (Path.cwd() / f"check-{a.parent.name}-{dev.name}" if in_bundle else a.parent)
    if write:  # the outputs can be written: known before the rollout, not after it
        from .core.files import preflight

        if outdir.exists() and not outdir.is_dir():
            raise BadInputError(f"output '{outdir}' is not a folder; give a folder for check.json, check.png and reference.npz")
        preflight(outdir / "check.json", kind="check")
        preflight(outdir / "check.png", kind="figure")
        if reference is None:
            preflight(outdir / "reference.npz", kind="reference")
    made_reference = False
    if reference is not None:
        unused = [n for n, v in (("model", model), ("contexts", contexts), ("k", k), ("span", span), ("fill", fill)) if v is not None]
        if unused:
            where = "the bundle's reference.npz" if in_bundle and a.parent / "reference.npz" == Path(str(reference)) else "the reference"
            raise BadInputError(
                f"{', '.join(unused)} given, but {where} already holds the contexts and the float trajectory; "
                "drop them, or check against the float model instead of a reference"
            )
        ref = reference if isinstance(reference, Reference) else Reference.load(Path(reference))
        if horizon and horizon != ref.horizon:
            raise BadInputError(
                f"--horizon {horizon}, but the reference holds {ref.horizon} steps",
                hint=Hint("reference-horizon", drop=("--horizon",), say="drop --horizon or rebuild the reference"),
            )
    else:
        inp = inputs(model, contexts, project=project, k=k, span=span, pick=pick, fill=fill, log=log)
        if info.get("model_sha256") and info["model_sha256"] != inp.model.sha256:
            raise BadInputError(
                f"{a.name} was converted from model sha256 {str(info['model_sha256'])[:12]}..., "
                f"not {inp.model.path} ({inp.model.sha256[:12]}...)"
            )
        ref = make_reference(inp.model, inp.spec, contexts_with_truth(inp, steps, parse_span(span)), steps)
        made_reference = True
    if log:
        log(f"checking {a.name} on {dev.name} ({dev.description or dev.kind}): {ref.horizon} steps x {ref.k} contexts")
    facts = {**(info.get("facts") or {}), "arena_bytes": info.get("arena_bytes")}
    result, _ = run(a, ref, dev, tol, target=tname, fmt=fmt, facts=facts, validated=True)
    if write:
        from .bundle.plots import plot_check
        from .core.files import new_folders

        with new_folders(outdir):
            outdir.mkdir(parents=True, exist_ok=True)
            if made_reference:
                ref.save(outdir / "reference.npz")
            result.save(outdir / "check.json")
            plot_check(result, outdir / "check.png")
    return result


def build(model: Any = None, target: Any = "raspberrypi", *, contexts: Any = None, log: Log | None = None, **kwargs: Any) -> BuildResult:
    """`edgetqs build`: the whole pipeline into ``output/<model>-<target>/`` (a `BuildResult`).
    Keyword arguments as `edgetqs.bundle.build.build` (device, budget, ratio, fmt, output, force, refine, k, score, ...)."""
    from .bundle.build import build as run

    return run(model, str(getattr(target, "path", None) or target), contexts=contexts, log=log, **kwargs)


def targets() -> list[tuple[Any, Any]]:
    """Every known target with where it came from: [(Target or the error loading it, catalogue entry)]."""
    from .allocation.targets import load_target, target_files
    from .errors import EdgetqsError

    out: list[tuple[Any, Any]] = []
    for e in target_files():
        try:
            out.append((load_target(e.path), e))
        except EdgetqsError as exc:
            out.append((exc, e))
    return out


def devices() -> list[tuple[Any, Any]]:
    """Every known device with where it came from: [(Device or the error loading it, catalogue entry)]."""
    from .errors import EdgetqsError
    from .validation.devices import device_files, load_device

    out: list[tuple[Any, Any]] = []
    for e in device_files():
        try:
            out.append((load_device(e.path), e))
        except EdgetqsError as exc:
            out.append((exc, e))
    return out


__all__ = ["Project", "build", "check", "convert", "devices", "inputs", "plan", "score", "targets"]
