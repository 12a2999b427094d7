"""The `edgetqs` command line: a thin layer over `edgetqs.api`.

Each command turns its options into the API's typed arguments, calls the API inside the one error
boundary (`edgetqs.console.boundary`), and renders the result (tables, plots, files). Heavy modules are
imported inside the commands, so ``--help`` stays light.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from . import api
from .console import Exit, boundary, err, note, out, say
from .errors import BadInputError

app = typer.Typer(
    name="edgetqs",
    help="Put autoregressive forecasters on edge devices and prove they still forecast. Score -> plan -> convert -> check -> build.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _runtimes() -> str:
    from .runtimes import RUNTIMES

    return RUNTIMES.help()


# options shared by several commands
Project = Annotated[Path | None, typer.Option(help="Project file (default: ./edgetqs.toml when present).")]
Contexts = Annotated[
    Path | None,
    typer.Option(
        "--contexts", "-c", help="Contexts: .npy/.npz/.csv/.nc record (time first), or a stack of windows [N, L, C] ([N, L]: univariate)."
    ),
]
K = Annotated[int | None, typer.Option("-k", help="Number of contexts (default: the project's, else 8).")]
Span = Annotated[str | None, typer.Option(help="Fraction of the record (or stack of windows) to draw contexts from, e.g. 0:0.5.")]


def _check_sizes(budget: str | None, reserve: str | None) -> None:
    """--budget and --reserve read as sizes before any work, the error naming the option (--reserve also takes 0)."""
    from .allocation.plan import parse_reserve, parse_size

    for flag, value, parse in (("--budget", budget, parse_size), ("--reserve", reserve, parse_reserve)):
        if value is None:
            continue
        try:
            parse(value)
        except BadInputError as exc:
            raise BadInputError(f"{flag}: {exc}") from None


Reserve = Annotated[
    str | None,
    typer.Option(
        help="Bytes of the budget the plan leaves unspent, e.g. 3072 or 3KiB, for what convert adds on its own "
        "(a window centred for dynamic range stores a level weight; convert's note names the reserve)."
    ),
]
Pick = Annotated[
    str | None, typer.Option(help="How contexts are spread over the record: even (evenly spaced, default) or random (seeded by --seed).")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")]
Include = Annotated[
    list[str] | None,
    typer.Option(help="Make a tensor the constant rules leave out (a mask, a range, zeros) a weight: NAME or re:REGEX (repeatable)."),
]
Exclude = Annotated[
    list[str] | None, typer.Option(help="Keep a tensor out of the weights (never scored, stored exactly): NAME or re:REGEX (repeatable).")
]
Fill = Annotated[
    str | None,
    typer.Option(help="Fill NaN/Inf in the contexts: ffill, interpolate or mean (default: `fill` in edgetqs.toml, else refuse them)."),
]
Activations = Annotated[
    str,
    typer.Option(
        help="float | int8 | int16 | dynamic | auto: the activations the artifact runs (the target's [activations] offers them "
        "per runtime; auto: its first). int8 (ort), dynamic and int8/int16 full integer (tflite) run integer where TQS finds the "
        "rollout allows it."
    ),
]
Rounding = Annotated[str, typer.Option(help="rtn (round to nearest) or gptq (layer-wise error compensation).")]


def _config(cls: Any, **values: Any) -> Any:
    """A typed config from option values (unset ones dropped); a bad value is one clear error."""
    from pydantic import ValidationError

    from .core.results import describe_validation_error

    given = {k: v for k, v in values.items() if v is not None and v != ()}
    try:
        return cls.model_validate(given)
    except ValidationError as exc:
        raise BadInputError(describe_validation_error(exc, "options")) from None


def _horizon(text: str | None) -> int | str | None:
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise BadInputError(f"horizon '{text}'; expected a positive integer or 'auto'") from None


@app.callback()
def main_options(debug: Annotated[bool, typer.Option("--debug", help="Print the traceback of an unexpected error.")] = False) -> None:
    """Global options."""
    from .console import DEBUG

    DEBUG["on"] = DEBUG["on"] or debug


@app.command()
def score(
    model: Annotated[Path | None, typer.Argument(help="ONNX model (default: `model` in ./edgetqs.toml).")] = None,
    contexts: Contexts = None,
    variables: Annotated[str | None, typer.Option(help="Comma-separated variables to read (CSV columns, NetCDF variables).")] = None,
    k: K = None,
    span: Span = None,
    pick: Pick = None,
    spinup: Annotated[bool, typer.Option(help="Data-free: spin the model up from noise and take states from its own trajectory.")] = False,
    spinup_scale: Annotated[float | None, typer.Option(help="Standard deviation of the spin-up noise (default 1).")] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            help="Rollout mode: state or window (inferred when unambiguous; window covers [B, L, C] -> [B, H, C] or [B, C], [B, L] -> [B, H])."
        ),
    ] = None,
    state: Annotated[list[str] | None, typer.Option(help="INPUT=OUTPUT pair fed back each step (repeatable).")] = None,
    increment: Annotated[bool | None, typer.Option("--increment/--no-increment", help="The model predicts the change.")] = None,
    static: Annotated[list[str] | None, typer.Option(help="Input held fixed along the rollout (repeatable).")] = None,
    output_slice: Annotated[
        str | None, typer.Option(help="Index applied to outputs before feeding back, e.g. '...,1' (a quantile), ':,None' (a new axis).")
    ] = None,
    channel_axis: Annotated[int | None, typer.Option(help="Axis of the variables (with batch) for normalisation.")] = None,
    forcing: Annotated[
        list[str] | None,
        typer.Option(
            help="Input read per step, not fed back (repeatable): INPUT=SOURCE[+SOURCE...][@predicted], SOURCE one of hour_of_day, "
            "day_of_year (sin, cos), solar_elevation (degrees), column:NAME[,NAME] (arrays of the record), e.g. tod=hour_of_day."
        ),
    ] = None,
    latitude: Annotated[float | None, typer.Option(help="The site's latitude in degrees north (solar_elevation forcings).")] = None,
    longitude: Annotated[float | None, typer.Option(help="The site's longitude in degrees east (solar_elevation forcings).")] = None,
    probe: Annotated[str | None, typer.Option(help="gauss (default) or quant.")] = None,
    granularity: Annotated[str | None, typer.Option(help="tensor (default) or block (tensors sharing a name prefix).")] = None,
    block_depth: Annotated[int | None, typer.Option(help="Name components forming a block (default: the parent module).")] = None,
    horizon: Annotated[str | None, typer.Option("--horizon", "-T", help="Rollout steps, or 'auto' (default 20).")] = None,
    max_horizon: Annotated[int | None, typer.Option(help="Upper bound for --horizon auto (default 64).")] = None,
    scale: Annotated[float | None, typer.Option(help="Relative size of the gauss probe (default 1e-3).")] = None,
    bits: Annotated[int | None, typer.Option(help="Bit-width of the quant probe (default 4).")] = None,
    ladder: Annotated[str | None, typer.Option(help="Also measure the quant probe at these bit-widths, e.g. 2,3,4,5,6,8.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for probes and spin-up (default 0).")] = None,
    include: Include = None,
    exclude: Exclude = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Parallel workers (default: a process per core from 5 M parameters, else 1; with --backend: every core)."),
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="Where the sweep runs: serial | processes | ray (pip install 'edgetqs[ray]'). Same scores on each.")
    ] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster to join (--backend ray; default: start a local one).")] = None,
    strategy: Annotated[str, typer.Option(help="feed (one session, weights as inputs), rebuild (session per group) or auto.")] = "auto",
    force: Annotated[bool, typer.Option(help="Score again even when the score cache holds these scores (or a checkpoint).")] = False,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write scores.json (a previous one is replaced).")] = Path(
        "scores.json"
    ),
    plot: Annotated[Path | None, typer.Option(help="Also write a PNG of the scores and gamma curves.")] = None,
    top: Annotated[int, typer.Option(help="Rows of the ranked table to print (0: all).")] = 20,
    fill: Fill = None,
    project: Project = None,
    quiet: Quiet = False,
) -> None:
    """Score each weight group's quantization sensitivity with TQS and write scores.json."""
    from .console import progress
    from .core.files import preflight
    from .core.project import RolloutConfig, ScoreConfig
    from .sensitivity.scores import parse_ladder

    with boundary():
        preflight(output, kind="scores")
        if plot:
            preflight(plot, kind="figure")
        if top < 0:
            raise BadInputError(f"--top {top}; expected 0 (all rows) or a positive number of rows")
        rollout = _config(
            RolloutConfig,
            mode=mode,
            state=tuple(state or ()),
            increment=increment,
            static=tuple(static or ()),
            output_slice=output_slice,
            channel_axis=channel_axis,
            forcing=tuple(forcing or ()),
            latitude=latitude,
            longitude=longitude,
        )
        settings = _config(
            ScoreConfig,
            probe=probe,
            granularity=granularity,
            block_depth=block_depth,
            horizon=_horizon(horizon),
            max_horizon=max_horizon,
            seed=seed,
            scale=scale,
            bits=bits,
            workers=workers,
            ladder=parse_ladder(ladder) if ladder is not None else None,
            include=tuple(include or ()),
            exclude=tuple(exclude or ()),
            backend=backend,
            address=address,
        )
        vars_ = [v.strip() for v in variables.split(",") if v.strip()] if variables is not None else None
        if variables is not None and not vars_:
            raise BadInputError("--variables is empty; give comma-separated names, e.g. t2m,psl")
        with progress("scoring groups", quiet) as bar:
            scores = api.score(
                model,
                contexts,
                project=project,
                k=k,
                span=span,
                variables=vars_,
                spinup=spinup,
                spinup_scale=spinup_scale,
                rollout=rollout,
                settings=settings,
                pick=pick,
                strategy=strategy,
                force=force,
                fill=fill,
                progress=bar,
                log=note,
                default_workers=0,  # a process per core for a large model, unless --workers or --backend says otherwise
            )
        scores.save(output)
        if not quiet:
            from .bundle.tables import constants_table, scores_table

            out.print(scores_table(scores, top))
            if scores.excluded:
                out.print(constants_table(scores.excluded))
        if plot:
            from .bundle.plots import plot_scores

            plot_scores(scores, plot)
            say(f"plot: {plot}")
        say(
            f"wrote {output} ({len(scores.groups)} groups, T={scores.horizon}, {scores.forward_calls} forward calls, "
            f"{scores.strategy} strategy, {scores.wall_seconds:.2f} s)"
        )


@app.command()
def plan(
    scores_file: Annotated[Path, typer.Argument(metavar="SCORES", help="scores.json from `edgetqs score`.")] = Path("scores.json"),
    target: Annotated[str, typer.Option("--target", "-t", help="Target name (see `edgetqs targets`) or path of a target .toml.")] = ...,  # type: ignore[assignment]
    model: Annotated[
        Path | None, typer.Option(help="The scored ONNX model (default: ./edgetqs.toml, then the path in scores.json).")
    ] = None,
    runtime: Annotated[str | None, typer.Option(help="Runtime to plan for (default: the target's first).")] = None,
    budget: Annotated[str | None, typer.Option(help="Weight budget, e.g. 150000, 600KB, 1.5MiB (default: the target's).")] = None,
    ratio: Annotated[float | None, typer.Option(help="Weight budget as a fraction of the fp32 size, e.g. 0.25.")] = None,
    reserve: Reserve = None,
    objective: Annotated[str, typer.Option(help="gain (predicted trajectory error) or paper (sum gamma * 2^-bits).")] = "gain",
    allocator: Annotated[str, typer.Option(help="exact (MILP, HiGHS) or greedy.")] = "exact",
    rounding: Rounding = "rtn",
    activations: Activations = "auto",
    keep_fp32: Annotated[float, typer.Option(help="Share of parameters kept in fp32, most sensitive groups first.")] = 0.0,
    lowest: Annotated[str | None, typer.Option(help="Lowest allowed tier, e.g. int4 or int8 (bits below are not used).")] = None,
    pin: Annotated[list[str] | None, typer.Option(help="NAME=PRECISION or re:REGEX=PRECISION (repeatable); exact beats regex.")] = None,
    include: Annotated[
        list[str] | None,
        typer.Option(help="Plan a tensor the constant rules leave out; it must be scored (score with the same --include)."),
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Also keep these tensors exact (constants), beside the scores' own: NAME or re:REGEX.")
    ] = None,
    pareto_n: Annotated[int | None, typer.Option("--pareto", help="Also plan at N budgets from the smallest feasible to fp32.")] = None,
    evaluate: Annotated[bool, typer.Option(help="Measure the rollout error of the plan(s) by simulated quantization.")] = False,
    refine: Annotated[
        bool,
        typer.Option(
            help="Re-score the plan in context: measure each tensor's damage with the rest quantized, re-solve, keep what also improves held-back contexts."
        ),
    ] = False,
    refine_rollouts: Annotated[int, typer.Option(help="Rollout budget of the re-scoring search.")] = 400,
    contexts: Contexts = None,
    k: K = None,
    span: Span = None,
    pick: Pick = None,
    fill: Fill = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write plan.json (a previous one is replaced).")] = Path(
        "plan.json"
    ),
    plot: Annotated[Path | None, typer.Option(help="PNG of the Pareto front (with --pareto).")] = None,
    project: Project = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No tables.")] = False,
) -> None:
    """Choose a precision per tensor under the target's memory budget and write plan.json."""
    from .core.files import preflight

    with boundary():
        preflight(output, kind="plan")
        if plot:
            preflight(plot, kind="figure")
        if budget is not None and ratio is not None:
            raise BadInputError("give --budget or --ratio, not both")
        if budget is not None and not budget.strip():
            raise BadInputError("--budget is empty; give a size such as 600KB, or leave it out for the target's budget")
        _check_sizes(budget, reserve)
        result = api.plan(
            scores_file,
            model,
            target,
            project=project,
            pareto=pareto_n,
            evaluate=evaluate,
            refine=refine,
            refine_rollouts=refine_rollouts,
            contexts=contexts,
            k=k,
            span=span,
            pick=pick,
            lowest=lowest,
            pins=tuple(pin or ()),
            budget=budget,
            reserve=reserve,
            include=tuple(include or ()),
            exclude=tuple(exclude or ()),
            runtime=runtime,
            ratio=ratio,
            objective=objective,
            allocator=allocator,
            keep_fp32_share=keep_fp32,
            rounding=rounding,
            activations=activations,
            fill=fill,
            log=note,
        )
        result.save(output)
        if not quiet:
            from .bundle.tables import evaluation_table, pareto_table, plan_table

            out.print(plan_table(result))
            if result.evaluation:
                out.print(evaluation_table(result))
            if result.pareto:
                out.print(pareto_table(result))
        if plot:
            if not result.pareto:
                note("--plot draws the Pareto front: add --pareto N")
            else:
                from .bundle.plots import plot_pareto

                plot_pareto(result, plot)
                say(f"plot: {plot}")
        say(
            f"wrote {output} ({len(result.tensors)} tensors, {result.weight_bytes:,} of {result.budget_bytes:,} bytes, "
            f"{result.allocator} in {result.solve_seconds * 1e3:.1f} ms)"
        )


@app.command()
def convert(
    model: Annotated[Path | None, typer.Argument(help="The float ONNX model (default: `model` in ./edgetqs.toml).")] = None,
    plan_file: Annotated[Path, typer.Option("--plan", "-p", help="plan.json from `edgetqs plan`.")] = Path("plan.json"),
    fmt: Annotated[str, typer.Option("--format", "-f", help="Artifact format (a registered runtime: see `edgetqs targets`).")] = ...,  # type: ignore[assignment]
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the artifact and convert.json.")] = Path("artifacts"),
    contexts: Contexts = None,
    k: K = None,
    span: Span = None,
    pick: Pick = None,
    horizon: Annotated[int | None, typer.Option("--horizon", "-T", help="Steps of the host check (default: the plan's).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an artifact of the same name.")] = False,
    activations: Annotated[
        str, typer.Option(help="float | int8 | int16 | dynamic | auto (the plan's, else the target's [activations] for the runtime).")
    ] = "auto",
    activation_goal: Annotated[
        float | None,
        typer.Option(
            help="ort with int8 / tflite with dynamic, int8 or int16 activations: the worst normalised RMSE the choice of integer activations "
            "aims at on the host contexts (default: 0.7 x the target's check tolerance); inf keeps every op integer."
        ),
    ] = None,
    fill: Fill = None,
    project: Project = None,
) -> None:
    """Write the plan as an artifact a runtime loads, read it back, and roll it out on the host."""
    with boundary():
        if output.exists() and not output.is_dir():
            raise BadInputError(f"--output '{output}' is not a folder; give a folder for the artifact and convert.json")
        r = api.convert(
            model,
            plan_file,
            fmt,
            output,
            contexts=contexts,
            k=k,
            horizon=horizon,
            overwrite=overwrite,
            activations=activations,
            activation_goal=activation_goal,
            project=project,
            span=span,
            pick=pick,
            fill=fill,
            log=note,
        )
        from .bundle.tables import convert_table

        out.print(convert_table(r))
        say(f"wrote {output / r.artifact} and {output / 'convert.json'} in {r.seconds:.2f} s")


@app.command()
def check(
    artifact: Annotated[Path, typer.Argument(help="The artifact (.onnx, .ort, .tflite, .tflm.tflite) or a bundle folder.")],
    device: Annotated[str, typer.Option("--device", "-d", help="Device name (see `edgetqs devices`) or file.")] = "local",
    model: Annotated[Path | None, typer.Option("--model", "-m", help="The float model for the reference (default: the project's).")] = None,
    reference: Annotated[Path | None, typer.Option("--reference", "-r", help="A reference.npz instead of the float model.")] = None,
    contexts: Contexts = None,
    k: K = None,
    span: Annotated[
        str | None, typer.Option(help="Fraction of the record to draw contexts from, e.g. 0.5:1 (held out from scoring).")
    ] = None,
    pick: Pick = None,
    horizon: Annotated[
        int | None, typer.Option("--horizon", "-T", help="Steps (default: the target's validation horizon, else 20).")
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", "-t", help="Target for the tolerance and horizon (default: from convert.json).")
    ] = None,
    tolerance: Annotated[float | None, typer.Option(help="Normalised-RMSE tolerance vs float (default: the target's, else 0.1).")] = None,
    fmt: Annotated[str | None, typer.Option("--format", "-f", help="Artifact format (default: from convert.json / the extension).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder for check.json, check.png, reference.npz.")] = None,
    fill: Fill = None,
    project: Project = None,
) -> None:
    """Roll the artifact out on a device (host, emulated ARM, ssh) and compare it with the float trajectory.

    Exit status: 0 pass, 1 fail (diverged, NaN, over tolerance), 2 error."""
    with boundary():
        if output is not None and output.exists() and not output.is_dir():
            raise BadInputError(f"--output '{output}' is not a folder; give a folder for check.json, check.png and reference.npz")
        r = api.check(
            artifact,
            device=device,
            reference=reference,
            model=model,
            contexts=contexts,
            k=k,
            span=span,
            pick=pick,
            horizon=horizon,
            target=target,
            tolerance=tolerance,
            fmt=fmt,
            project=project,
            output=output,
            fill=fill,
            log=say,
        )
        from .bundle.tables import check_table
        from .console import Text

        out.print(check_table(r))
        out.print(Text(r.verdict, style="bold green" if r.passed else "bold red"))
        raise Exit(0 if r.passed else 1)


@app.command()
def build(
    model: Annotated[Path | None, typer.Argument(help="The float ONNX model (default: `model` in ./edgetqs.toml).")] = None,
    target: Annotated[str, typer.Option("--target", "-t", help="Target name (see `edgetqs targets`) or path of a target .toml.")] = ...,  # type: ignore[assignment]
    device: Annotated[
        str | None, typer.Option("--device", "-d", help="Where to check (default: the target's device, else the host).")
    ] = None,
    budget: Annotated[str | None, typer.Option(help="Weight budget, e.g. 600KB (default: the target's).")] = None,
    ratio: Annotated[float | None, typer.Option(help="Weight budget as a fraction of the fp32 size, e.g. 0.25.")] = None,
    reserve: Reserve = None,
    fmt: Annotated[str | None, typer.Option("--format", "-f", help="Artifact format (default: the target's first runtime).")] = None,
    activations: Activations = "auto",
    rounding: Rounding = "rtn",
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the bundle <model>-<target>/.")] = Path("dist"),
    force: Annotated[bool, typer.Option(help="Rescore even when cached scores exist.")] = False,
    refine: Annotated[
        bool,
        typer.Option(
            help="Re-score the plan in context: measure each tensor's damage with the rest quantized, re-solve, keep what also improves held-back contexts."
        ),
    ] = True,
    refine_rollouts: Annotated[int, typer.Option(help="Rollout budget of the re-scoring search.")] = 400,
    k: K = None,
    contexts: Contexts = None,
    span: Span = None,
    pick: Pick = None,
    groups: Annotated[
        str | None, typer.Option("--groups", help="Weight groups: tensor (default) or block (one per module: fewer rollouts).")
    ] = None,
    include: Include = None,
    exclude: Exclude = None,
    fill: Fill = None,
    project: Project = None,
) -> None:
    """Score, plan, convert, check and report in one command: a validated bundle in dist/<model>-<target>/.

    Exit status: 0 when the check passes, 1 when it fails (the bundle is still written), 2 on error."""
    from .console import Text, progress
    from .core.project import ScoreConfig

    with boundary():
        if output.exists() and not output.is_dir():
            raise BadInputError(f"--output '{output}' is not a folder; give a folder for the bundles")
        score_cfg = _config(ScoreConfig, granularity=groups, include=tuple(include or ()), exclude=tuple(exclude or ()))
        if budget is not None and not budget.strip():
            raise BadInputError("--budget is empty; give a size such as 600KB, or leave it out for the target's budget")
        _check_sizes(budget, reserve)
        with progress("      scoring") as bar:
            r = api.build(
                model,
                target,
                device=device,
                budget=budget,
                ratio=ratio,
                reserve=reserve,
                fmt=fmt,
                activations=activations,
                rounding=rounding,
                output=output,
                project=project,
                force=force,
                refine=refine,
                refine_rollouts=refine_rollouts,
                k=k,
                contexts=contexts,
                span=span,
                pick=pick,
                score=score_cfg,
                fill=fill,
                log=say,
                progress=bar,
            )
        out.print(Text(r.verdict, style="bold green" if r.passed else "bold red"))
        out.print(Text(f"bundle: {r.bundle} (report: {r.bundle / 'report.html'})"))
        raise Exit(0 if r.passed else 1)


@app.command()
def devices() -> None:
    """List the devices (./devices, $EDGETQS_DEVICES_PATH, shipped) and whether each is ready."""
    from rich.table import Table

    from .console import Text

    with boundary():
        t = Table(title="devices")
        for col in ("name", "kind", "description", "ready", "from", "file"):
            t.add_column(col)
        for d, e in api.devices():
            where = e.origin + (f" (shadows {', '.join(str(s) for s in e.shadows)})" if e.shadows else "")
            if isinstance(d, Exception):
                t.add_row(Text(e.name), "?", "", Text(f"bad file: {d}", style="red"), Text(where), Text(str(e.path)))
                continue
            ok, why = d.ready()
            t.add_row(
                Text(d.name),
                d.kind,
                Text(d.description),
                Text(("yes: " if ok else "no: ") + why, style="green" if ok else "red"),
                Text(where),
                Text(str(e.path)),
            )
        out.print(t)


@app.command()
def targets() -> None:
    """List the targets (./targets, $EDGETQS_TARGETS_PATH, shipped) with their budgets and where each came from."""
    from rich.table import Table

    from .allocation.plan import kib
    from .console import Text

    with boundary():
        t = Table(title="targets")
        for col in ("name", "arch", "runtimes", "weights budget", "RAM budget", "check on", "from", "file"):
            t.add_column(col)
        for tg, e in api.targets():
            where = e.origin + (f" (shadows {', '.join(str(s) for s in e.shadows)})" if e.shadows else "")
            if isinstance(tg, Exception):
                t.add_row(Text(e.name), "?", "", Text(f"bad file: {tg}", style="red"), "", "", Text(where), Text(str(e.path)))
                continue
            t.add_row(
                Text(tg.name),
                Text(tg.arch),
                ", ".join(tg.runtimes),
                f"{tg.weight_budget_bytes:,} B ({kib(tg.weight_budget_bytes)})",
                f"{tg.ram_budget_bytes:,} B ({kib(tg.ram_budget_bytes)})",
                Text(tg.default_device),
                Text(where),
                Text(str(e.path)),
            )
        out.print(t)


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the project in.")],
    example: Annotated[str, typer.Option("--example", "-e", help="Bundled example to copy (see `edgetqs examples`).")] = "lorenz96",
    overwrite: Annotated[bool, typer.Option(help="Replace files that already exist.")] = False,
) -> None:
    """Write a project (edgetqs.toml, model, contexts) from a bundled example."""
    with boundary():
        from .examples import init_project

        for p in init_project(directory, example, overwrite=overwrite):
            say(f"wrote {p}")
        say(f"next: cd {directory} && edgetqs score --plot scores.png")


@app.command()
def examples() -> None:
    """List the bundled example models."""
    from rich.table import Table

    from .console import Text

    with boundary():
        from .examples import list_examples

        t = Table(title="bundled examples")
        for col in ("name", "mode", "parameters", "description"):
            t.add_column(col)
        for ex in list_examples():
            t.add_row(ex.name, ex.mode, f"{ex.n_params:,}", Text(ex.description))
        out.print(t)


def _empty_argument(args: list[str]) -> str | None:
    """No option or argument of edgetqs takes an empty value: ``-o ""`` would mean the current folder, ``--ladder ""``
    no ladder. Say which one is empty (None: none is)."""
    for i, a in enumerate(args):
        if a.startswith("--") and a.endswith("=") and len(a) > 3:
            name, value = a[:-1], ""
        elif a.strip():
            continue
        else:
            name = args[i - 1] if i > 0 and args[i - 1].startswith("-") else f"argument {i + 1}"
            value = a
        return f"{name} is given an empty value {value!r}; give a value, or leave it out for the default (see `edgetqs --help`)"
    return None


def main() -> None:  # console-script entry point
    """Run the app; usage errors (a bad option value) become the same one ``error:`` line as every other failure."""
    from .console import error_line, native_stderr_aside

    empty = _empty_argument(sys.argv[1:])
    if empty:
        error_line(empty)
        sys.exit(2)
    try:
        with native_stderr_aside():
            rc = app(standalone_mode=False)
    except Exit as exc:
        rc = exc.code
    except KeyboardInterrupt:
        err.print("interrupted")
        rc = 130
    except Exception as exc:
        name = type(exc).__name__
        if name == "NoArgsIsHelpError":
            rc = 0
        elif hasattr(exc, "format_message"):  # UsageError, BadParameter, NoSuchOption...
            ctx = getattr(exc, "ctx", None)
            cmd = f"edgetqs {ctx.info_name} --help" if ctx is not None and getattr(ctx, "parent", None) is not None else "edgetqs --help"
            error_line(f"{exc.format_message()} (see `{cmd}`)")
            rc = 2
        elif name == "Abort":
            err.print("interrupted")
            rc = 130
        elif hasattr(exc, "exit_code"):
            rc = int(exc.exit_code)
        else:
            with contextlib.suppress(Exit), boundary():
                raise
            rc = 2
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
