"""The `edgetqs` command line. Heavy modules are imported inside the commands, so `--help` stays light."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .errors import EdgetqsError

app = typer.Typer(
    name="edgetqs",
    help="Put autoregressive forecasters on edge devices and prove they still forecast. Score -> plan -> convert -> check.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()


def _fail(exc: EdgetqsError) -> None:
    console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def score(
    model: Optional[Path] = typer.Argument(None, help="ONNX model (default: `model` in ./edgetqs.toml)."),
    contexts: Optional[Path] = typer.Option(None, "--contexts", "-c", help="Initial states: .npy/.npz/.csv/.nc record, time first."),
    variables: Optional[str] = typer.Option(None, help="Comma-separated variables to read (CSV columns, NetCDF variables)."),
    k: Optional[int] = typer.Option(None, "-k", help="Number of contexts (default 8)."),
    span: Optional[str] = typer.Option(None, help="Fraction of the record to draw contexts from, e.g. 0:0.5."),
    spinup: bool = typer.Option(False, help="Data-free: spin the model up from noise and take states from its own trajectory."),
    spinup_scale: float = typer.Option(1.0, help="Standard deviation of the spin-up noise."),
    mode: Optional[str] = typer.Option(None, help="Rollout mode: state or window (inferred when unambiguous)."),
    state: Optional[list[str]] = typer.Option(None, help="INPUT=OUTPUT pair fed back each step (repeatable)."),
    increment: Optional[bool] = typer.Option(None, "--increment/--no-increment", help="The model predicts the change (next = input + output)."),
    static: Optional[list[str]] = typer.Option(None, help="Input held fixed along the rollout (repeatable)."),
    output_slice: Optional[str] = typer.Option(None, help="Index applied to outputs before feeding back, e.g. '...,1'."),
    channel_axis: Optional[int] = typer.Option(None, help="Axis of the variables (with batch) for normalisation."),
    probe: Optional[str] = typer.Option(None, help="gauss (default) or quant."),
    granularity: Optional[str] = typer.Option(None, help="tensor (default) or block (tensors sharing a name prefix)."),
    block_depth: Optional[int] = typer.Option(None, help="Name components forming a block (default: the parent module)."),
    horizon: Optional[str] = typer.Option(None, "--horizon", "-T", help="Rollout steps, or 'auto' (default 20)."),
    max_horizon: Optional[int] = typer.Option(None, help="Upper bound for --horizon auto (default 64)."),
    scale: Optional[float] = typer.Option(None, help="Relative size of the gauss probe (default 1e-3)."),
    bits: Optional[int] = typer.Option(None, help="Bit-width of the quant probe (default 4)."),
    ladder: Optional[str] = typer.Option(None, help="Also measure the quant probe at these bit-widths, e.g. 2,3,4,5,6,8: the plan prices each option with its own gain."),
    seed: Optional[int] = typer.Option(None, help="Seed for probes and spin-up (default 0)."),
    workers: Optional[int] = typer.Option(None, help="Parallel worker processes (default 1)."),
    strategy: str = typer.Option("auto", help="feed (one session, weights as inputs), rebuild (optimised session per group) or auto (timed)."),
    output: Path = typer.Option(Path("scores.json"), "--output", "-o", help="Where to write scores.json."),
    plot: Optional[Path] = typer.Option(None, help="Also write a PNG of the scores and gamma curves."),
    top: int = typer.Option(20, help="Rows of the ranked table to print (0: all)."),
    project: Optional[Path] = typer.Option(None, help="Project file (default: ./edgetqs.toml when present)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table."),
) -> None:
    """Score each weight group's quantization sensitivity with TQS and write scores.json."""
    try:
        _score(**locals())
    except EdgetqsError as exc:
        _fail(exc)


def _score(model, contexts, variables, k, span, spinup, spinup_scale, mode, state, increment, static, output_slice,
           channel_axis, probe, granularity, block_depth, horizon, max_horizon, scale, bits, ladder, seed, workers, strategy, output, plot,
           top, project, quiet) -> None:
    from .inputs import resolve
    from .project import find_project, load_project
    from .tqs import ProbeSettings, run_sweep

    proj = load_project(project) if project else find_project()
    cfg = dict(proj.score) if proj else {}
    n_workers = workers if workers is not None else int(cfg.get("workers", 1))
    options = dict(probe=probe, granularity=granularity, block_depth=block_depth, max_horizon=max_horizon, scale=scale, bits=bits,
                   seed=seed, horizon=horizon, ladder=ladder)
    settings = ProbeSettings.from_config({**cfg, **{k: v for k, v in options.items() if v is not None}})  # options beat the file
    inp = resolve(model, proj, contexts_path=contexts, variables=variables.split(",") if variables else None, k=k, span=span,
                  spinup=spinup, spinup_scale=spinup_scale, seed=settings.seed, mode=mode, state=state, increment=increment,
                  static=static, output_slice=output_slice, channel_axis=channel_axis)
    for note in inp.notes:
        console.print(f"[yellow]note:[/] {note}")
    groups_hint = "tensor" if settings.granularity == "tensor" else "block"
    if quiet:
        scores = run_sweep(inp.model, inp.spec, inp.contexts, settings, workers=n_workers, notes=inp.notes, strategy=strategy)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        with Progress(TextColumn("scoring {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True) as bar:
            task = bar.add_task(f"{groups_hint} groups", total=None)

            def cb(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            scores = run_sweep(inp.model, inp.spec, inp.contexts, settings, workers=n_workers, progress=cb, notes=inp.notes, strategy=strategy)
    scores.save(output)
    if not quiet:
        from .tables import scores_table

        out.print(scores_table(scores, top))
    if plot:
        from .plots import plot_scores

        plot_scores(scores, plot)
        console.print(f"plot: {plot}")
    console.print(f"wrote {output} ({len(scores.groups)} groups, T={scores.horizon}, {scores.forward_calls} forward calls, {scores.strategy} strategy, {scores.wall_seconds:.2f} s)")


@app.command()
def plan(
    scores_file: Path = typer.Argument(Path("scores.json"), metavar="SCORES", help="scores.json from `edgetqs score`."),
    target: str = typer.Option(..., "--target", "-t", help="Target name (see `edgetqs targets`) or path of a target .toml."),
    model: Optional[Path] = typer.Option(None, help="The scored ONNX model (default: ./edgetqs.toml, then the path in scores.json)."),
    runtime: Optional[str] = typer.Option(None, help="Runtime to plan for (default: the target's first)."),
    budget: Optional[str] = typer.Option(None, help="Weight budget, e.g. 150000, 600KB, 1.5MiB (default: the target's)."),
    ratio: Optional[float] = typer.Option(None, help="Weight budget as a fraction of the fp32 size, e.g. 0.25."),
    objective: str = typer.Option("gain", help="gain (predicted trajectory error) or paper (sum gamma * 2^-bits)."),
    allocator: str = typer.Option("exact", help="exact (MILP, HiGHS) or greedy."),
    keep_fp32: float = typer.Option(0.0, help="Share of parameters kept in fp32, most sensitive groups first."),
    lowest: Optional[str] = typer.Option(None, help="Lowest allowed tier, e.g. int4 or int8 (bits below are not used)."),
    pin: Optional[list[str]] = typer.Option(None, help="NAME=PRECISION or re:REGEX=PRECISION (repeatable); exact beats regex."),
    pareto_n: Optional[int] = typer.Option(None, "--pareto", help="Also plan at N budgets from the smallest feasible to fp32."),
    evaluate: bool = typer.Option(False, help="Measure the rollout error of the plan(s) by simulated quantization."),
    refine: bool = typer.Option(False, help="Measure candidates with the lowest tier raised (none, 3..6 bits) on the contexts; keep the best."),
    contexts: Optional[Path] = typer.Option(None, "--contexts", "-c", help="Contexts for --evaluate (default: the project's)."),
    k: Optional[int] = typer.Option(None, "-k", help="Contexts for --evaluate (default 8)."),
    span: Optional[str] = typer.Option(None, help="Fraction of the record for --evaluate contexts, e.g. 0.5:1."),
    output: Path = typer.Option(Path("plan.json"), "--output", "-o", help="Where to write plan.json."),
    plot: Optional[Path] = typer.Option(None, help="PNG of the Pareto front (with --pareto)."),
    project: Optional[Path] = typer.Option(None, help="Project file (default: ./edgetqs.toml when present)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No tables."),
) -> None:
    """Choose a precision per tensor under the target's memory budget and write plan.json."""
    try:
        _plan(**locals())
    except EdgetqsError as exc:
        _fail(exc)


def _plan(scores_file, target, model, runtime, budget, ratio, objective, allocator, keep_fp32, lowest, pin, pareto_n, evaluate,
          refine, contexts, k, span, output, plot, project, quiet) -> None:
    from .model import load_model
    from .plan import PlanOptions, make_plan, parse_pin, parse_size, pareto
    from .project import find_project, load_project
    from .quantize import parse_precision
    from .targets import find_target
    from .tqs import Scores

    scores = Scores.load(scores_file)
    proj = load_project(project) if project else find_project()
    mpath = model or (proj.model if proj else None) or (Path(scores.model_path) if scores.model_path else None)
    if mpath is None:
        from .errors import BadInputError

        raise BadInputError("no model: pass --model (the ONNX file that was scored)")
    m = load_model(mpath)
    tgt = find_target(target)
    lowest_bits = parse_precision(lowest).bits if lowest else None
    opts = PlanOptions(runtime=runtime, budget_bytes=parse_size(budget) if budget else None, ratio=ratio, objective=objective,
                       allocator=allocator, keep_fp32_share=keep_fp32, lowest_bits=lowest_bits,
                       pins=tuple(parse_pin(p) for p in (pin or [])))
    inp = None
    if evaluate or refine:
        from .inputs import resolve

        inp = resolve(mpath, proj, contexts_path=contexts, k=k, span=span, mode=scores.spec.mode,
                      state=[f"{a}={b}" for a, b in scores.spec.pairs], increment=scores.spec.increment,
                      static=list(scores.spec.static), output_slice=scores.spec.output_slice, channel_axis=scores.spec.channel_axis)
    if refine:
        from .refine import refine as run_refine

        result, _ = run_refine(scores, m, tgt, opts, inp.spec, inp.contexts)
        console.print(f"[yellow]note:[/] {result.notes[-1]}")
    else:
        result = make_plan(scores, m, tgt, opts)
    front = pareto(scores, m, tgt, opts, pareto_n) if pareto_n else []
    measured = {}
    if evaluate:
        from .evaluate import measure, simulated_weights

        from .rollout import Rollout

        ref = Rollout(m, inp.spec, inp.contexts.statics, model_bytes=m.bytes).run(inp.contexts.arrays, scores.horizon).steps
        for p in [result] + front:
            measured[id(p)] = measure(m, inp.spec, inp.contexts, simulated_weights(m, p), scores.horizon, ref)
        mm = measured[id(result)]
        from dataclasses import replace

        result = replace(result, evaluation=mm.to_dict(inp.contexts, scores.horizon))
        measured[id(result)] = mm
    result.save(output)
    if not quiet:
        from .tables import pareto_table, plan_table

        out.print(plan_table(result, measured.get(id(result))))
        if result.evaluation:
            from .tables import evaluation_table

            out.print(evaluation_table(result))
        if front:
            out.print(pareto_table(front, measured, result))
    if plot and front:
        from .plots import plot_pareto

        plot_pareto(front, measured, result, plot)
        console.print(f"plot: {plot}")
    console.print(f"wrote {output} ({len(result.tensors)} tensors, {result.weight_bytes:,} of {result.budget_bytes:,} bytes, "
                  f"{result.allocator} in {result.solve_seconds * 1e3:.1f} ms)")


@app.command()
def convert(
    model: Optional[Path] = typer.Argument(None, help="The float ONNX model (default: `model` in ./edgetqs.toml)."),
    plan_file: Path = typer.Option(Path("plan.json"), "--plan", "-p", help="plan.json from `edgetqs plan`."),
    fmt: str = typer.Option(..., "--format", "-f", help="ort | ort-mobile | tflite | tflm."),
    output: Path = typer.Option(Path("artifacts"), "--output", "-o", help="Folder for the artifact and convert.json."),
    contexts: Optional[Path] = typer.Option(None, "--contexts", "-c", help="Contexts for the host check (default: the project's)."),
    k: Optional[int] = typer.Option(None, "-k", help="Contexts for the host check (default 8)."),
    horizon: Optional[int] = typer.Option(None, "--horizon", "-T", help="Steps of the host check (default: the plan's)."),
    overwrite: bool = typer.Option(False, help="Replace an artifact of the same name."),
    activations: str = typer.Option("auto", help="tflm: int16 | int8 | auto (the target's preference, falling back when TFLM refuses)."),
    project: Optional[Path] = typer.Option(None, help="Project file (default: ./edgetqs.toml when present)."),
) -> None:
    """Write the plan as an artifact a runtime loads, read it back, and roll it out on the host."""
    try:
        from .convert import convert as run_convert
        from .inputs import resolve
        from .plan import Plan
        from .project import find_project, load_project

        p = Plan.load(plan_file)
        proj = load_project(project) if project else find_project()
        inp = resolve(model, proj, contexts_path=contexts, k=k)
        r = run_convert(inp.model, p, fmt, output, inp.contexts, inp.spec, horizon=horizon, overwrite=overwrite,
                        activations=activations)
        from .tables import convert_table

        out.print(convert_table(r))
        console.print(f"wrote {output / r.artifact} and {output / 'convert.json'} in {r.seconds:.2f} s")
    except EdgetqsError as exc:
        _fail(exc)


@app.command()
def check(
    artifact: Path = typer.Argument(..., help="The converted artifact (.onnx, .ort, .tflite, .tflm.tflite)."),
    device: str = typer.Option("local", "--device", "-d", help="Device name (devices/*.toml) or file: local, qemu-pi4, qemu-pi5, ..."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="The float model for the reference (default: the project's)."),
    reference: Optional[Path] = typer.Option(None, "--reference", "-r", help="A reference.npz (from a bundle) instead of the float model."),
    contexts: Optional[Path] = typer.Option(None, "--contexts", "-c", help="Contexts (default: the project's)."),
    k: Optional[int] = typer.Option(None, "-k", help="Number of contexts (default 8)."),
    span: Optional[str] = typer.Option(None, help="Fraction of the record to draw contexts from, e.g. 0.5:1 (held out from scoring)."),
    horizon: Optional[int] = typer.Option(None, "--horizon", "-T", help="Steps (default: the target's validation horizon, else 20)."),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Target for the tolerance and horizon (default: from convert.json)."),
    tolerance: Optional[float] = typer.Option(None, help="Normalised-RMSE tolerance vs float (default: the target's, else 0.1)."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="ort | ort-mobile | tflite | tflm (default: from convert.json / the extension)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for check.json, check.png, reference.npz (default: the artifact's)."),
    project: Optional[Path] = typer.Option(None, help="Project file (default: ./edgetqs.toml when present)."),
) -> None:
    """Roll the artifact out on a device (host, emulated ARM, ssh) and compare it with the float trajectory.

    Exit status: 0 pass, 1 fail (diverged, NaN, over tolerance), 2 error."""
    import json as _json

    try:
        from .check import Reference, artifact_format, check as run_check, contexts_with_truth, make_reference, plot_check, validate_artifact
        from .devices import find_device
        from .errors import BadInputError

        dev = find_device(device)
        fmt = artifact_format(artifact, fmt)
        validate_artifact(artifact, fmt)  # a corrupted file fails before any work
        conv = artifact.parent / "convert.json"
        info = {}
        if conv.exists():
            try:
                info = _json.loads(conv.read_text())
            except _json.JSONDecodeError:
                info = {}
        tname = target or info.get("target")
        tg = None
        if tname:
            from .targets import find_target

            try:
                tg = find_target(tname)
            except EdgetqsError:
                if target:
                    raise
        tol = tolerance if tolerance is not None else (tg.validation_tolerance if tg else 0.1)
        T = horizon or (tg.validation_horizon if tg else 20)
        in_bundle = (artifact.parent / "manifest.json").exists()
        if in_bundle and reference is None and (artifact.parent / "reference.npz").exists():
            reference = artifact.parent / "reference.npz"  # a bundle carries its reference: no float model needed
        # never write into a bundle: its manifest lists every file with its hash
        outdir = output or (Path.cwd() / f"check-{artifact.parent.name}-{dev.name}" if in_bundle else artifact.parent)
        outdir.mkdir(parents=True, exist_ok=True)
        if reference is not None:
            ref = Reference.load(reference)
            if horizon and horizon != ref.horizon:
                raise BadInputError(f"--horizon {horizon}, but {reference} holds {ref.horizon} steps; drop --horizon or rebuild the reference")
        else:
            from .inputs import resolve
            from .project import find_project, load_project

            proj = load_project(project) if project else find_project()
            inp = resolve(model, proj, contexts_path=contexts, k=k, span=span)
            if info.get("model_sha256") and info["model_sha256"] != inp.model.sha256:
                raise BadInputError(f"{artifact.name} was converted from model sha256 {info['model_sha256'][:12]}..., not {inp.model.path} ({inp.model.sha256[:12]}...)")
            from .inputs import parse_span

            ctx = contexts_with_truth(inp, T, parse_span(span))
            ref = make_reference(inp.model, inp.spec, ctx, T)
            ref.save(outdir / "reference.npz")
        console.print(f"checking {artifact.name} on {dev.name} ({dev.description or dev.kind}): {ref.horizon} steps x {ref.contexts[next(iter(ref.contexts))].shape[0]} contexts")
        r, _ = run_check(artifact, ref, dev, tol, target=tname, fmt=fmt, arena_bytes=info.get("arena_bytes"), validated=True)
        r.save(outdir / "check.json")
        plot_check(r, outdir / "check.png")
        from .tables import check_table

        out.print(check_table(r))
        console.print(f"wrote {outdir / 'check.json'}, {outdir / 'check.png'}" + ("" if reference else f", {outdir / 'reference.npz'}"))
        out.print(("[bold green]" if r.passed else "[bold red]") + r.verdict + "[/]", highlight=False)
        raise typer.Exit(0 if r.passed else 1)
    except EdgetqsError as exc:
        _fail(exc)


@app.command()
def build(
    model: Optional[Path] = typer.Argument(None, help="The float ONNX model (default: `model` in ./edgetqs.toml)."),
    target: str = typer.Option(..., "--target", "-t", help="Target name (see `edgetqs targets`) or path of a target .toml."),
    device: Optional[str] = typer.Option(None, "--device", "-d", help="Where to check (default: the target's device, else the host)."),
    budget: Optional[str] = typer.Option(None, help="Weight budget, e.g. 600KB (default: the target's)."),
    ratio: Optional[float] = typer.Option(None, help="Weight budget as a fraction of the fp32 size, e.g. 0.25."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="ort | ort-mobile | tflite | tflm (default: the target's first runtime)."),
    output: Path = typer.Option(Path("dist"), "--output", "-o", help="Folder for the bundle <model>-<target>/."),
    force: bool = typer.Option(False, help="Rescore even when cached scores exist."),
    refine: bool = typer.Option(True, help="Measure candidate plans (lowest tier raised step by step) on the contexts and keep the best."),
    k: Optional[int] = typer.Option(None, "-k", help="Number of contexts (default: the project's, else 8)."),
    contexts: Optional[Path] = typer.Option(None, "--contexts", "-c", help="Contexts (default: the project's)."),
    project: Optional[Path] = typer.Option(None, help="Project file (default: ./edgetqs.toml when present)."),
) -> None:
    """Score, plan, convert, check and report in one command: a validated bundle in dist/<model>-<target>/.

    Exit status: 0 when the check passes, 1 when it fails (the bundle is still written), 2 on error."""
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from .build import build as run_build

        bars: list = []  # the sweep's progress bar, started at its first report (nothing is drawn otherwise)

        def cb(done: int, total: int) -> None:
            if not bars:
                bar = Progress(TextColumn("      scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                               TimeRemainingColumn(), console=console, transient=True)
                bar.start()
                bars.append((bar, bar.add_task("groups", total=total)))
            bar, task = bars[0]
            bar.update(task, completed=done, total=total)
            if done >= total:
                bar.stop()

        try:
            r = run_build(model, target, device=device, budget=budget, ratio=ratio, fmt=fmt, output=output, project=project,
                          force=force, refine=refine, k=k, contexts_path=contexts, log=lambda m: console.print(m, highlight=False), progress=cb)
        finally:
            for bar, _ in bars:
                bar.stop()
        out.print(("[bold green]" if r.passed else "[bold red]") + r.verdict + "[/]", highlight=False)
        out.print(f"bundle: {r.bundle} (report: {r.bundle / 'report.html'})")
        raise typer.Exit(0 if r.passed else 1)
    except EdgetqsError as exc:
        _fail(exc)


@app.command()
def devices() -> None:
    """List the devices (shipped in devices/ and ./devices) and whether each is ready."""
    try:
        from rich.table import Table

        from .devices import device_files, load_device

        t = Table(title="devices")
        for col in ("name", "kind", "description", "ready", "file"):
            t.add_column(col)
        for f in device_files():
            try:
                d = load_device(f)
            except EdgetqsError as exc:
                t.add_row(f.stem, "?", "", f"[red]bad file: {exc}[/]", str(f))
                continue
            ok, why = d.ready()
            t.add_row(d.name, d.kind, d.description, ("[green]yes[/]: " if ok else "[red]no[/]: ") + why, str(f))
        out.print(t)
    except EdgetqsError as exc:
        _fail(exc)


@app.command()
def targets() -> None:
    """List the targets (shipped in targets/ and ./targets) with their budgets."""
    try:
        from rich.table import Table

        from .plan import kib
        from .targets import load_target, target_files

        t = Table(title="targets")
        for col in ("name", "arch", "runtimes", "weights budget", "RAM budget", "check on", "file"):
            t.add_column(col)
        for f in target_files():
            tg = load_target(f)
            t.add_row(tg.name, tg.arch, ", ".join(tg.runtimes), f"{tg.weight_budget_bytes:,} B ({kib(tg.weight_budget_bytes)})",
                      f"{tg.ram_budget_bytes:,} B ({kib(tg.ram_budget_bytes)})", tg.default_device, str(f))
        out.print(t)
    except EdgetqsError as exc:
        _fail(exc)


@app.command()
def init(
    directory: Path = typer.Argument(..., help="Folder to create the project in."),
    example: str = typer.Option("lorenz96", "--example", "-e", help="Bundled example to copy (see `edgetqs examples`)."),
    overwrite: bool = typer.Option(False, help="Replace files that already exist."),
) -> None:
    """Write a project (edgetqs.toml, model, contexts) from a bundled example."""
    try:
        from .examples import init_project

        written = init_project(directory, example, overwrite=overwrite)
        for p in written:
            console.print(f"wrote {p}")
        console.print(f"next: cd {directory} && edgetqs score --plot scores.png")
    except EdgetqsError as exc:
        _fail(exc)


@app.command()
def examples() -> None:
    """List the bundled example models."""
    from rich.table import Table

    from .examples import list_examples

    t = Table(title="bundled examples")
    for col in ("name", "mode", "parameters", "description"):
        t.add_column(col)
    for ex in list_examples():
        t.add_row(ex.name, ex.mode, f"{ex.n_params:,}", ex.description)
    out.print(t)


def main() -> None:  # console-script entry point
    try:
        app()
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
