"""Label efficiency: finetuning a run pretrained on real galaxies against training from scratch, by labels.

    python benchmarks/finetune_labels.py --out /work/exp/ft [--pretrained RUN] [--epochs 20] [--folds 5]
                                         [--labels 25 50 100 all] [--preset hubble+edge-on] [--quick]
                                         [--backbone-lr-mult 1] [--freeze-epochs 0]
                                         [--pretrain-epochs N] [--pretrain-augment RECIPE]

1. Pretraining (unless --pretrained): the default model on ../shared/data/gz-kaggle-q1, preset
   smooth-featured, leaving out every galaxy whose GalaxyID is also in gz-kaggle-sample (printed).
2. The 601 fully labelled gz-kaggle-sample galaxies with --preset (>= 3 classes), split in --folds
   stratified folds. For each fold and each labels-per-class budget (capped by what a class has in the
   fold's training part; "all" = every one), a split manifest picks the training galaxies, and two runs
   train on them for the same epochs: from scratch, and `--init` the pretrained run. Both are scored on the
   fold's held-out galaxies by their last epoch (history.csv), not by model.pt: that is the best epoch, chosen
   on those same held-out galaxies, which would flatter the small runs most.
3. One table: per budget, mean ± std over folds of accuracy and balanced accuracy, and the gain; then the cost.
Every folder it writes goes under --out (outside the repository: it is derived from the data).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from sklearn.model_selection import StratifiedKFold

from zoomorph import api
from zoomorph.io.ids import join_keys
from zoomorph.models.recipe import Finetune

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pretrain(out: Path, epochs: int | None, seed: int, augment: str | None = None) -> Path:
    """The default model on q1 without the sample's galaxies; returns the run folder."""
    q1 = pd.read_csv(DATA / "gz-kaggle-q1" / "labels_q1.csv", index_col=0)
    sample = pd.read_csv(DATA / "gz-kaggle-sample" / "solutions.csv")
    sample_ids = set(join_keys(sample["GalaxyID"]))
    overlap = join_keys(q1["GalaxyID"]).isin(sample_ids)
    images = {p.stem for p in (DATA / "gz-kaggle-q1" / "images").glob("*.jpg")}
    in_both = sample_ids & set(join_keys(pd.Series(sorted(images))))
    print(f"pretraining: {int(overlap.sum())} of the {len(sample)} sample galaxies are in gz-kaggle-q1's labels "
          f"({len(in_both)} have a q1 image, {len(in_both & set(join_keys(q1['GalaxyID'])))} of those labelled); "
          f"their label rows are left out, {int((~overlap).sum()):,} remain")
    labels = out / "q1-without-sample.csv"
    q1[~overlap.to_numpy()].to_csv(labels)
    prepared = api.prepare(DATA / "gz-kaggle-q1" / "images", labels, out / "q1-prepared", preset="smooth-featured",
                           progress=False)
    result = api.train(prepared.data, out=out / "pretrained", epochs=epochs, augment=augment, seed=seed,
                       progress=False)
    print(f"  pretrained on {len(prepared.data.indices('train')):,} q1 galaxies: val accuracy "
          f"{result.summary['best_val_acc']:.4f} ({result.summary['epochs']} epochs, augment "
          f"{augment or 'of the recipe'})")
    return result.run_dir


def folds(labelled: pd.Series, n_folds: int, seed: int):
    """(fold, training ids, held-out ids) per stratified fold."""
    splitter = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
    for k, (train, held) in enumerate(splitter.split(labelled.index, labelled.to_numpy())):
        yield k, labelled.iloc[train], labelled.iloc[held]


def budget_ids(train: pd.Series, per_class: int | None, seed: int) -> list[str]:
    """Up to `per_class` training galaxies of each class (None: all), drawn with `seed`."""
    picked = [group.sample(min(len(group), per_class), random_state=seed) if per_class else group
              for _, group in train.groupby(train)]
    return [str(i) for g in picked for i in g.index]


def score(run: Path) -> tuple[float, float]:
    """The last epoch's accuracy and balanced accuracy on the held-out fold (each galaxy once, unaugmented)."""
    last = pd.read_csv(run / "history.csv").iloc[-1]
    return float(last["val_acc"]), float(last["val_bal_acc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pretrained", type=Path, help="a run to start from instead of pretraining one")
    parser.add_argument("--preset", default="hubble+edge-on")
    parser.add_argument("--epochs", type=int, default=20, help="of every finetuned and scratch run")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="default: the model's recipe")
    parser.add_argument("--pretrain-augment", default=None, help="default: the model's recipe")
    parser.add_argument("--batch-size", type=int, default=None, help="of every run (default: the model's recipe)")
    parser.add_argument("--backbone-lr-mult", type=float, default=None, help="of the finetuned runs (default 1)")
    parser.add_argument("--freeze-epochs", type=int, default=0, help="of the finetuned runs")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--labels", nargs="*", default=["25", "50", "100", "all"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 folds, 2 epochs, 25 and all")
    args = parser.parse_args()
    if args.quick:
        args.folds, args.epochs, args.labels, args.pretrain_epochs = 2, 2, ["25", "all"], args.pretrain_epochs or 2
    started, out = time.perf_counter(), args.out
    out.mkdir(parents=True, exist_ok=True)
    parent = args.pretrained or pretrain(out, args.pretrain_epochs, args.seed, args.pretrain_augment)
    pretrain_s = time.perf_counter() - started
    print(f"pretrained run: {parent} ({pretrain_s:.0f} s{', reused' if args.pretrained else ''})")
    seconds = {"prepare": 0.0, "finetuned": 0.0, "scratch": 0.0}

    labels, _ = api.label_solutions(DATA / "gz-kaggle-sample" / "solutions.csv", args.preset)
    labelled = labels.labels.dropna()
    labelled.index = labelled.index.astype(str)
    print(f"finetuning set: {len(labelled)} labelled sample galaxies, {args.preset}: "
          + ", ".join(f"{c} {n}" for c, n in labelled.value_counts().items()))
    sample = out / "sample"  # every fold caches the same images: the cache is reused by key
    rows = []
    for fold, train, held in folds(labelled, args.folds, args.seed):
        for budget in args.labels:
            per_class = None if budget == "all" else int(budget)
            manifest = out / f"fold{fold}-{budget}.csv"
            ids = budget_ids(train, per_class, args.seed + fold)
            pd.DataFrame({"id": ids + list(held.index), "split": ["train"] * len(ids) + ["val"] * len(held)}
                         ).to_csv(manifest, index=False)
            t = time.perf_counter()
            prepared = api.prepare(DATA / "gz-kaggle-sample" / "images", DATA / "gz-kaggle-sample" / "solutions.csv",
                                   sample / f"fold{fold}-{budget}", preset=args.preset, split_file=manifest,
                                   progress=False)
            seconds["prepare"] += time.perf_counter() - t
            for how, init in (("finetuned", parent), ("scratch", None)):
                t = time.perf_counter()
                how_ft = dict(init=init, backbone_lr_mult=args.backbone_lr_mult, freeze_epochs=args.freeze_epochs) \
                    if init else {}
                run = api.train(prepared.data, out=out / "runs" / f"fold{fold}-{budget}-{how}", epochs=args.epochs,
                                batch_size=args.batch_size, seed=args.seed, resume=False, progress=False,
                                **how_ft).run_dir
                seconds[how] += time.perf_counter() - t
                accuracy, balanced = score(run)
                rows.append({"labels": budget, "fold": fold, "how": how, "train": len(ids), "accuracy": accuracy,
                             "balanced_accuracy": balanced})
                print(f"  fold {fold} labels {budget:>4} {how:9} train {len(ids):3}  acc {accuracy:.3f}  "
                      f"bal {balanced:.3f}  ({time.perf_counter() - started:.0f} s)", flush=True)
    results = pd.DataFrame(rows)
    results.to_csv(out / "finetune_labels.csv", index=False)
    print_table(results, args)
    print(f"\ncost: {(time.perf_counter() - started) / 60:.1f} min in all: pretraining {pretrain_s / 60:.1f} min"
          f"{' (reused)' if args.pretrained else ''}, fold folders {seconds['prepare'] / 60:.1f} min, "
          f"{len(results) // 2} finetuned runs {seconds['finetuned'] / 60:.1f} min, {len(results) // 2} scratch "
          f"runs {seconds['scratch'] / 60:.1f} min; per fold in {out / 'finetune_labels.csv'}")


def print_table(results: pd.DataFrame, args) -> None:
    multiplier = args.backbone_lr_mult or Finetune().backbone_lr_mult
    print(f"\nlabel efficiency, {args.preset}, {args.folds}-fold CV, {args.epochs} epochs each, batch "
          f"{args.batch_size or 'of the recipe'}, finetuned with backbone lr x{multiplier:g} and "
          f"{args.freeze_epochs} frozen epochs, last epoch (mean ± std over folds)")
    print(f"{'labels/class':>12} {'train':>6} | {'finetuned acc':>14} {'scratch acc':>14} {'gain':>15} | "
          f"{'finetuned bal':>14} {'scratch bal':>14} {'gain':>15}")
    for budget in args.labels:
        part = results[results["labels"] == budget]
        ft, sc = part[part["how"] == "finetuned"], part[part["how"] == "scratch"]
        # per fold, the same split for both: the gain's spread is that of the paired differences
        gain = {col: ft[col].reset_index(drop=True) - sc[col].reset_index(drop=True)
                for col in ("accuracy", "balanced_accuracy")}
        print(f"{budget:>12} {ft['train'].mean():6.0f} | {_cell(ft['accuracy']):>14} {_cell(sc['accuracy']):>14} "
              f"{_cell(gain['accuracy'], '+'):>15} | {_cell(ft['balanced_accuracy']):>14} "
              f"{_cell(sc['balanced_accuracy']):>14} {_cell(gain['balanced_accuracy'], '+'):>15}")


def _cell(values: pd.Series, sign: str = "") -> str:
    return f"{values.mean():{sign}.3f} ± {values.std(ddof=1) if len(values) > 1 else 0:.3f}"


if __name__ == "__main__":
    main()
