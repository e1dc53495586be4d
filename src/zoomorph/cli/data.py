"""Commands on data: synthetic sets, labels, prepared folders, cutouts fetched by position."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from zoomorph.cli.common import ConflictsOpt, PresetOpt, _table, console, user_errors


@user_errors
def synth(out: Path = typer.Argument(..., help="folder to write images/ and solutions.csv into"),
          n: int = typer.Option(1000, "--n", help="number of galaxies"),
          seed: int = typer.Option(0, help="random seed (same seed, same set)")) -> None:
    """Generate a synthetic Galaxy Zoo set in the exact Kaggle layout (for demos and tests only)."""
    from zoomorph.api import synth as make_synthetic

    solutions = make_synthetic(out, n, seed=seed)
    console.print(f"wrote {n:,} synthetic galaxies: {out / 'images'} and {solutions}")


@user_errors
def labels(solutions: Path = typer.Argument(..., help="solutions CSV (full or partial Kaggle columns)"),
           preset: str = PresetOpt, conflicts: str = ConflictsOpt,
           min_share: float = typer.Option(0.8, help="smooth-featured: minimum winning share"),
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="write GalaxyID,label CSV here")) -> None:
    """Turn vote fractions into classes with a preset; print the counts."""
    from zoomorph.api import label_solutions

    result, report = label_solutions(solutions, preset, conflicts=conflicts, min_share=min_share, out=out)
    rows = {f"{c} (meets rule)": result.matches[c] for c in result.classes}
    rows.update({f"{c} (labelled)": result.counts[c] for c in result.classes})
    rows[f"conflicts ({result.preset.conflicts})"] = len(result.conflicts)
    rows["unassigned"] = result.unassigned
    rows["rows skipped as invalid"] = len(report.rows)
    console.print(_table(f"preset {result.preset.name}: {len(result.labels):,} galaxies", rows))
    if result.labels.empty:
        console.print(f"[yellow]warning:[/yellow] {solutions}: no galaxies: "
                      + ("every row was rejected" if report.rows else "no data rows, only a header"))
    for pair, n in result.conflicts["classes"].value_counts().items():
        console.print(f"  {n} galaxies meet several rules: {pair}")
    if report.rows:
        console.print(report.summary().to_string())
    if out:
        console.print(f"labels written to {out}")


@user_errors
def prepare(images: Path = typer.Argument(..., help="image folder, Kaggle zip, or catalogue CSV/Parquet"),
            labels_file: Optional[Path] = typer.Option(None, "--labels", "-l", help="solutions / labels CSV"),
            out: Path = typer.Option(..., "--out", "-o", help="prepared data folder to write"),
            preset: str = PresetOpt, conflicts: str = ConflictsOpt,
            min_share: float = typer.Option(0.8, help="smooth-featured: minimum winning share"),
            model: Optional[str] = typer.Option(None, "--model", "-m", help="prepare for this registered model: "
                                                "its default size and field of view"),
            size: Optional[int] = typer.Option(None, help="cached image side, pixels (default 64, or the model's)"),
            fov: Optional[str] = typer.Option(None, help="'auto' (the default, or the model's): each "
                                                         "galaxy's own, a square of a fixed multiple of "
                                                         "its measured R90 about its centre, sky-filled past the frame "
                                                         "(docs/other-surveys.md); or a central crop "
                                                         "side in Kaggle (424 px) pixels (256: the fixed "
                                                         "crop, 4 x 64 px, decodes fastest)"),
            val: float = typer.Option(0.2, help="validation fraction"),
            test: float = typer.Option(0.0, help="test fraction"),
            seed: int = typer.Option(0, help="split seed"),
            split_file: Optional[Path] = typer.Option(None, "--split", help="split manifest (id,split) to use as "
                                                      "given instead of --val/--test/--seed; galaxies it does "
                                                      "not list are left out"),
            workers: Optional[int] = typer.Option(None, help="decode processes (default: one per core; "
                                                             "0: decode in this process)")) -> None:
    """Labels + stratified split + uint8 image cache, in one step."""
    from zoomorph.api import prepare as run_prepare
    from zoomorph.data.prepare import PrepareRefused

    try:
        summary = run_prepare(images, labels_file, out, preset=preset, conflicts=conflicts, min_share=min_share,
                              model=model, size=size, fov=fov, val=val, test=test, seed=seed, workers=workers,
                              split_file=split_file)
    except PrepareRefused as err:  # the accounting still matters: it says why
        console.print(_table(f"not prepared: {out} (left as it was)", err.counts))
        console.print(f"skipped-items report: {err.report}")
        raise
    console.print(_table(f"prepared {out}" + (" (cache reused)" if summary.reused_cache else ""), summary.counts))
    for warning in summary.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"skipped-items report: {out / 'skipped.csv'}")

@user_errors
def cutouts(catalogue: Path = typer.Argument(..., help="catalogue with RA/Dec in degrees: CSV, Parquet, FITS, "
                                                       "VOTable or ECSV"),
            survey: str = typer.Option("legacy", help="legacy (Legacy Survey viewer) | sdss (SkyServer DR18)"),
            out: Path = typer.Option(..., "--out", "-o", help="folder for the cutouts and catalogue.csv/.parquet"),
            format: str = typer.Option("jpeg", help="jpeg | fits (legacy: g, r, z bands)"),
            layer: Optional[str] = typer.Option(None, help="legacy: the viewer's layer (default ls-dr10)"),
            size: int = typer.Option(424, help="side in pixels (legacy at most 512, sdss 2048)"),
            pixscale: Optional[float] = typer.Option(None, help="arcsec per pixel (default the survey's: "
                                                                "0.262 legacy, 0.396 sdss)"),
            radius_column: Optional[str] = typer.Option(None, help="instead of --pixscale: each galaxy's radius "
                                                                   "in arcsec (e.g. petroR90_r)"),
            radius_multiple: float = typer.Option(8.48, help="with --radius-column: the side in radii (8.48: "
                                                             "Galaxy Zoo 2's framing)"),
            id_column: Optional[str] = typer.Option(None, help="file names from this column (default the first "
                                                               "of objid, id, galaxyid, ...; made safe)"),
            base_url: Optional[str] = typer.Option(None, help="another address for the service (mirror, test)"),
            concurrency: int = typer.Option(4, help="requests at once"),
            rate: float = typer.Option(5.0, help="request starts per second, retries included"),
            retries: int = typer.Option(4, help="retries on 5xx, 429, timeouts, bad bodies (never on 404)"),
            backoff: float = typer.Option(1.0, help="seconds before the first retry, doubled for each next"),
            timeout: float = typer.Option(30.0, help="seconds without an answer before a try fails"),
            max_wait: float = typer.Option(120.0, help="the longest pause, a server's Retry-After included")
            ) -> None:
    r"""Fetch a colour cutout for every catalogue position (pip install 'zoomorph\[cutouts]'); re-run to resume."""
    from zoomorph.api import cutouts as run_cutouts

    summary = run_cutouts(catalogue, out, survey=survey, format=format, layer=layer, size=size, pixscale=pixscale,
                          radius_column=radius_column, radius_multiple=radius_multiple, id_column=id_column,
                          base_url=base_url, concurrency=concurrency, rate=rate, retries=retries, backoff=backoff,
                          timeout=timeout, max_wait=max_wait)
    console.print(f"{summary.total:,} rows -> {summary.catalogue}: {summary.fetched:,} fetched, "
                  f"{summary.on_disk:,} already on disk, {summary.failed:,} failed (see the status and error "
                  f"columns); {summary.requests:,} requests in {summary.seconds:,.1f} s")
    for reason, n in list(summary.reasons.items())[:5]:
        console.print(f"  {n:,} failed: {escape(reason)}")
