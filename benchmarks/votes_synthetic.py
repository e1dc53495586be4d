"""The votes head on the synthetic set: RMSE against the training-mean baseline, and derived classes.

    python benchmarks/votes_synthetic.py [--n 1500] [--epochs 10] [--model convnet] [--out bench-votes]

Trains the 37-answer head on synthetic galaxies, then prints the Kaggle RMSE on
validation for the model and for always predicting the training mean, and how
often the `hubble` classes derived from predicted fractions equal those derived
from the true fractions. Synthetic data: a check that the path works, not a
figure of real performance.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from zoomorph.data.prepare import prepare
from zoomorph.data.synthetic import make_synthetic
from zoomorph.evaluation.metrics import kaggle_rmse
from zoomorph.inference import Predictor
from zoomorph.labels import assign
from zoomorph.runs import Run
from zoomorph.schema import ANSWER_COLUMNS
from zoomorph.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--out", type=Path, default=Path("bench-votes"))
    args = parser.parse_args()

    if not (args.out / "set" / "solutions.csv").exists():
        make_synthetic(args.out / "set", args.n, seed=7)
    data = prepare(args.out / "set" / "images", args.out / "set" / "solutions.csv", args.out / "prepared",
                   preset="hubble", progress=False).data
    train(data, model=args.model, head="votes", run_dir=args.out / "run", epochs=args.epochs, resume=False,
          progress=False)
    net = Run.open(args.out / "run").load_model()

    train_rows, val_rows = data.indices("train", labelled=False), data.indices("val", labelled=False)
    truth = data.table.iloc[val_rows][ANSWER_COLUMNS].to_numpy()
    predicted = Predictor.from_model(net, "votes").probabilities(data.images[val_rows])
    mean = np.broadcast_to(data.table.iloc[train_rows][ANSWER_COLUMNS].to_numpy().mean(0), truth.shape)
    ids = data.table.iloc[val_rows]["id"].to_numpy()
    derived = assign(pd.DataFrame(predicted, index=ids, columns=ANSWER_COLUMNS), "hubble").labels
    true = assign(pd.DataFrame(truth, index=ids, columns=ANSWER_COLUMNS), "hubble").labels
    both = true.notna()
    print(f"validation galaxies: {len(val_rows):,} ({args.model}, {args.epochs} epochs, votes head)")
    print(f"Kaggle RMSE, model              : {kaggle_rmse(truth, predicted):.4f}")
    print(f"Kaggle RMSE, training mean      : {kaggle_rmse(truth, mean):.4f}")
    print(f"hubble class from predicted fractions = from true fractions: "
          f"{(derived[both] == true[both]).mean():.3f} of {int(both.sum())} galaxies with a true class "
          f"({int(derived[both].isna().sum())} left unassigned by the prediction)")


if __name__ == "__main__":
    main()
