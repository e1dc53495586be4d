"""The `zoomorph` command: a thin Typer layer, one function per command, no logic.

Everything here calls the Python API (zoomorph.api) that notebooks use too; each command imports what it
runs, so `zoomorph --help` and the light commands start fast.

    common.py    the app, the console, tables, user errors as one line (exit 2)
    data.py      synth, labels, prepare, cutouts
    train.py     train, models, demo
    evaluate.py  evaluate, report, compare
    deploy.py    predict, export, pack, info, serve
"""

from __future__ import annotations

from zoomorph.cli import data, deploy, evaluate, train
from zoomorph.cli.common import app

# The commands in pipeline order, the order `zoomorph --help` lists them in.
COMMANDS = (data.synth, data.labels, data.prepare, data.cutouts, train.train, train.models, train.demo,
            evaluate.evaluate, evaluate.report, evaluate.compare,
            deploy.predict, deploy.export, deploy.pack, deploy.info, deploy.serve)
for command in COMMANDS:
    app.command()(command)

__all__ = ["app", "main"]


def main() -> None:
    app()


if __name__ == "__main__":
    main()
