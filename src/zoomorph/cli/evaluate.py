"""Commands that judge runs: evaluate, report, compare."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from zoomorph.cli.common import console, user_errors


@user_errors
def evaluate(run: Path = typer.Argument(..., help="run folder (from `zoomorph train`) or packed model"),
             data: Optional[Path] = typer.Option(None, help="prepared folder (default: the one it trained on)"),
             split: str = typer.Option("val", help="val | test | all"),
             tta: bool = typer.Option(False, help="also average over the 8 rotations/flips"),
             shifts: bool = typer.Option(False, help="also the survey-shift suite: the images re-read at full "
                                                     "resolution, blurred, noisier, zoomed, ... (docs/evaluation.md)")
             ) -> None:
    """Accuracy, balanced accuracy with 95% intervals, per class, calibration (or Kaggle RMSE for votes)."""
    from zoomorph.api import evaluate as run_evaluate
    from zoomorph.evaluation.evaluate import format_metrics_table, format_shifts_table
    from zoomorph.runs import Run

    metrics = run_evaluate(run, data, split=split, tta=tta, shifts=shifts)
    console.print(format_metrics_table(metrics))
    if shifts:
        console.print(format_shifts_table(metrics))
    elif "shifts" in metrics:
        console.print(f"survey shifts: kept from the evaluate --shifts of {metrics['shifts']['at']} "
                      "(the same weights and galaxies)")
    console.print(f"metrics written to {Run.open(run).metrics_file}")


@user_errors
def report(run: Path = typer.Argument(..., help="run folder or packed model"),
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file (default RUN/report.html)")) -> None:
    """Write one self-contained HTML report: config, data, curves, metrics, confusion, calibration, saliency."""
    from zoomorph.api import report as run_report

    path = run_report(run, out)
    console.print(f"report written to {path}")


@user_errors
def compare(runs: list[Path] = typer.Argument(..., help="run folders evaluated on the same split"),
            out: Path = typer.Option(Path("compare.html"), "--out", "-o", help="HTML page to write")) -> None:
    """Compare runs: one table (and overlaid training curves in the HTML page)."""
    import pandas as pd

    from zoomorph.api import compare as run_compare

    table, path = run_compare(runs, out)
    # one column per run, one row per field: readable at any terminal width
    rich_table = Table(title=f"model comparison ({table['split'].iloc[0]} split {table['split_hash'].iloc[0]})",
                       title_justify="left")
    rich_table.add_column("")
    for run_name in table["run"]:
        rich_table.add_column(str(run_name), justify="right")
    for field in [c for c in table.columns if c not in ("run", "split", "split_hash")]:
        values = table[field]
        if values.isna().all():
            continue
        rich_table.add_row(field, *["-" if pd.isna(v) else f"{v:,.4g}" if isinstance(v, float) else f"{v:,}"
                                    if isinstance(v, int) else str(v) for v in values])
    console.print(rich_table)
    console.print(f"comparison page written to {path}")
