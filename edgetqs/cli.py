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


def _horizon(text: Optional[str]) -> Optional[int]:
    from .errors import BadInputError

    if text is None or text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise BadInputError(f"horizon '{text}'; expected a positive integer or 'auto'") from None


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
           channel_axis, probe, granularity, block_depth, horizon, max_horizon, scale, bits, seed, workers, strategy, output, plot,
           top, project, quiet) -> None:
    from dataclasses import replace

    from .inputs import resolve
    from .project import find_project, load_project
    from .tqs import ProbeSettings, run_sweep

    proj = load_project(project) if project else find_project()
    cfg = dict(proj.score) if proj else {}
    if horizon is None and "horizon" in cfg:
        horizon = str(cfg["horizon"])
    n_workers = workers if workers is not None else int(cfg.get("workers", 1))
    settings = ProbeSettings()
    fields = dict(probe=probe, granularity=granularity, block_depth=block_depth, max_horizon=max_horizon, scale=scale, bits=bits, seed=seed)
    for key, val in fields.items():
        v = val if val is not None else cfg.get(key)
        if v is not None:
            settings = replace(settings, **{key: v})
    settings = replace(settings, horizon=_horizon(horizon) if horizon is not None else settings.horizon)
    settings.validate()
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
