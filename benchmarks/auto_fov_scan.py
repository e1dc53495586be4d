"""How the multiple of R90 that `--fov auto` crops (zoomorph.io.decode.AUTO_MULTIPLE) was chosen.

    python benchmarks/auto_fov_scan.py [--multiples 2.2 2.65 3.31] [--seeds 0 1 2 3 4] [--work DIR]

For each multiple: prepare the real q1 split (../shared/data/gz-kaggle-q1, smooth vs featured) with
`--fov auto` cut at that multiple (WORK/q1-mNNN), then train the default recipe for each seed
(WORK/mNNN-sS) and score it in domain and on the survey-shift suite (`evaluate_run(run, shifts=True)`).
Prints a row per run, the mean per multiple, and the multiple with the best mean validation accuracy.

Resumable: a prepared cache, a trained run or a suite already in WORK is reused, so a stopped scan carries
on where it stopped. Each run takes 10-20 minutes on 2 cores. The multiple is part of the cut
(AUTO_CUT), so this patches it for the whole process, prepare, train and suite alike; a set or run made
with another multiple than the code's is refused by the code as it ships (Run.check_cut).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import zoomorph.io.decode as decode
from zoomorph import api
from zoomorph.evaluation.evaluate import evaluate_run

Q1 = Path(__file__).resolve().parents[2] / "shared" / "data" / "gz-kaggle-q1"
ZOOMS = ("zoom_out", "zoom_in")


def use_multiple(multiple: float) -> None:
    """Cut `--fov auto` at `multiple` x R90 in this process (and the workers it forks)."""
    decode.AUTO_MULTIPLE = decode.AUTO_CUT["multiple"] = multiple


def scored(run: Path, seed: int, data: Path) -> dict:
    """The run's metrics with the suite, training and evaluating what is not in WORK yet."""
    if not (run / "summary.json").exists():
        api.train(data, seed=seed, out=run, progress=False)
    metrics_file = run / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    if "shifts" not in metrics:
        metrics = evaluate_run(run, shifts=True)
    return metrics


def summarise(metrics: dict) -> dict:
    """In domain, the suite's 1x, the worst zoom against 1x and the lowest middle shift, in %."""
    plain, suite = metrics["variants"]["plain"], metrics["shifts"]
    reference = suite["reference"]["accuracy"]
    zooms = [r for r in suite["results"] if r["shift"] in ZOOMS]
    worst = min(zooms, key=lambda r: r["accuracy"])
    middle = min((r for r in suite["results"] if r["level"] == "middle"), key=lambda r: r["accuracy"])
    return {"in_domain": 100 * plain["accuracy"], "right": round(plain["accuracy"] * plain["n"]),
            "n": plain["n"], "suite_1x": 100 * reference,
            "worst_zoom": 100 * (worst["accuracy"] - reference), "worst_zoom_at": worst["label"],
            "lowest_middle": 100 * middle["accuracy"], "lowest_middle_at": f"{middle['title']} {middle['label']}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--multiples", type=float, nargs="+", default=[2.2, 2.65, 3.31])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--work", type=Path, default=Path("auto-fov-scan"))
    args = parser.parse_args()
    if not Q1.exists():
        raise SystemExit(f"{Q1} not found: the scan needs the real q1 split")
    shipped = decode.AUTO_MULTIPLE
    rows = []
    for multiple in args.multiples:
        use_multiple(multiple)
        tag = f"m{round(multiple * 100)}"
        data = args.work / f"q1-{tag}"
        api.prepare(Q1 / "images", Q1 / "labels_q1.csv", data, preset="smooth-featured", fov="auto",
                    progress=False)  # reuses WORK's cache when it was cut the same way
        for seed in args.seeds:
            row = summarise(scored(args.work / f"{tag}-s{seed}", seed, data))
            rows.append({"multiple": multiple, "seed": seed, **row})
            print(f"{multiple:4.2f} seed {seed}: in domain {row['in_domain']:.2f} % ({row['right']}/{row['n']}), "
                  f"suite 1x {row['suite_1x']:.2f}, worst zoom {row['worst_zoom']:+.2f} ({row['worst_zoom_at']}), "
                  f"lowest middle shift {row['lowest_middle']:.1f} ({row['lowest_middle_at']})", flush=True)
    print("\nmultiple  seeds  in domain (mean ± std)  worst zoom (mean, worst)  lowest middle shift (mean, lowest)")
    means = {}
    for multiple in args.multiples:
        mine = [r for r in rows if r["multiple"] == multiple]
        acc, zoom, middle = (np.array([r[k] for r in mine]) for k in ("in_domain", "worst_zoom", "lowest_middle"))
        means[multiple] = acc.mean()
        print(f"{multiple:8.2f}  {len(mine):5d}  {acc.mean():6.2f} ± {acc.std():.2f} %        "
              f"{zoom.mean():+.2f}, {zoom.min():+.2f}             {middle.mean():.1f}, {middle.min():.1f}")
    best = max(means, key=means.get)
    print(f"\nbest mean in domain: {best} x R90 ({means[best]:.2f} %); in the code: AUTO_MULTIPLE = {shipped}")


if __name__ == "__main__":
    main()
