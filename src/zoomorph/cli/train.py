"""Commands that train: train, models, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from zoomorph.cli.common import _table, console, user_errors


@user_errors
def train(data: Path = typer.Argument(..., help="prepared data folder (from `zoomorph prepare`)"),
          model: Optional[str] = typer.Option(None, "--model", "-m",
                                              help="registered model (see `zoomorph models`; default: the project's)"),
          head: str = typer.Option("classes", help="classes (N-way) or votes (the 37 Galaxy Zoo fractions)"),
          run_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="run folder (default runs/DATA-MODEL-HEAD)"),
          epochs: Optional[int] = typer.Option(None, help="maximum epochs (default: the model's recipe)"),
          batch_size: Optional[int] = typer.Option(None, help="batch size (default: the model's recipe)"),
          lr: Optional[float] = typer.Option(None, help="learning rate (default: the model's recipe)"),
          augment: Optional[str] = typer.Option(None, help="none | seed | kaggle | scale | survey | survey-lite "
                                                           "(default: recipe)"),
          balance: str = typer.Option("sampler", help="class balance: sampler | weights | none"),
          val_loss_stop: Optional[float] = typer.Option(None, help="stop once val loss is below this"),
          patience: Optional[int] = typer.Option(None, help="early-stopping patience in epochs"),
          seed: int = typer.Option(0, help="random seed"),
          deterministic: bool = typer.Option(False, help="bit-reproducible (slower on GPU)"),
          fresh: bool = typer.Option(False, help="start over: delete the run folder's weights, checkpoints and "
                                                  "results first instead of resuming"),
          accelerator: str = typer.Option("auto", help="cpu | gpu | auto"),
          devices: str = typer.Option("auto", help="number of devices, or auto"),
          num_nodes: int = typer.Option(1, help="nodes for multi-node DDP"),
          strategy: str = typer.Option("auto", help="Lightning strategy, e.g. ddp"),
          precision: Optional[str] = typer.Option(None, help="e.g. 32-true, bf16-mixed (default: mixed on GPU)"),
          max_minutes: Optional[float] = typer.Option(None, help="stop after this many minutes"),
          init: Optional[Path] = typer.Option(None, "--init", help="finetune: start from this trained run's "
                                              "backbone (same model; default --model: the run's), fresh head"),
          freeze_epochs: int = typer.Option(0, help="with --init: keep the backbone as it is for the first N "
                                                    "epochs (only the head learns)"),
          freeze_blocks: int = typer.Option(0, help="with --init: never train the backbone's first N blocks"),
          backbone_lr_mult: Optional[float] = typer.Option(None, help="with --init: the backbone's learning rate "
                                                                      "over the head's (default 1)")) -> None:
    """Train a model on a prepared folder; re-running the same command resumes it."""
    from zoomorph.api import train as run_train

    result = run_train(data, model=model, head=head, out=run_dir, epochs=epochs, batch_size=batch_size,
                       lr=lr, augment=augment, balance=balance, val_loss_stop=val_loss_stop,
                       patience=patience, seed=seed, deterministic=deterministic, resume=not fresh,
                       accelerator=accelerator, devices=int(devices) if devices.isdigit() else devices,
                       num_nodes=num_nodes, strategy=strategy, precision=precision, max_minutes=max_minutes,
                       init=init, freeze_epochs=freeze_epochs, freeze_blocks=freeze_blocks,
                       backbone_lr_mult=backbone_lr_mult)
    _print_train_summary(result.summary, result.run_dir)


def _print_train_summary(summary: dict, run_dir: Path) -> None:
    from zoomorph.evaluation.robustness import zoom_check_caption
    from zoomorph.runs import RunConfig

    if not summary:
        return
    rows = {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in summary.items()
            if not isinstance(v, (dict, list)) and v is not None}
    console.print(_table(f"run {run_dir}", rows, "", "value"))
    zoom = Table(title="the zoom check", title_justify="left")
    zoom.add_column("zoom")
    metrics = next(iter(summary["zoom"].values())).keys()
    for m in metrics:
        zoom.add_column(m, justify="right")
    for factor, values in summary["zoom"].items():
        zoom.add_row(f"{factor}x", *[f"{values[m]:.4f}" for m in metrics])
    console.print(zoom)
    console.print(f"The zoom check: {zoom_check_caption(RunConfig.load(run_dir).fov)}.", highlight=False)


@user_errors
def models() -> None:
    """List the registered models with their default input size and recipe."""
    from zoomorph.api import models as registered

    table = Table(title="registered models", title_justify="left")
    for col in ("name", "input", "description"):
        table.add_column(col)
    for spec in registered():
        table.add_row(spec.name, f"{spec.default_image_size}px, fov {spec.default_fov}", spec.description)
    console.print(table)


@user_errors
def demo(out: Path = typer.Option(Path("demo"), "--out", "-o", help="folder for the demo's data and run"),
         n: int = typer.Option(1500, "--n", help="synthetic galaxies to generate"),
         epochs: int = typer.Option(15, help="training epochs (kept short: the demo runs in ~2 minutes)")) -> None:
    """The whole pipeline on synthetic galaxies: generate, prepare, train, report accuracy."""
    from zoomorph.api import demo as run_demo

    result = run_demo(out, n=n, epochs=epochs)
    _print_train_summary(result["summary"], result["run_dir"])
    console.print(f"[bold]demo done in {result['seconds']:.0f} s[/bold]: synthetic data in {out / 'synthetic'}, "
                  f"prepared data in {result['prepared']}, trained run in {result['run_dir']}\n"
                  "Synthetic accuracy shows the pipeline works; it is not a measure of real performance.")
