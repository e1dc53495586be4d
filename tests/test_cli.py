"""The command line is a thin layer: each command runs, prints its accounting, fails with a clear message."""

import pandas as pd
from typer.testing import CliRunner

from conftest import REAL_DATA, needs_real_data
from zoomorph.cli import app

runner = CliRunner()


def test_every_command_has_help():
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert {"prepare", "train", "predict", "cutouts", "pack", "info", "serve"} <= set(commands)
    for command in commands:
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, command
        assert "Usage" in result.output


def test_models_lists_the_registry():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    for name in ["seed-model1", "seed-model2", "convnet", "convnet-lite", "resnet", "rotinv"]:
        assert name in result.output


def test_labels_and_prepare_on_a_tiny_set(kaggle_dir, tmp_path):
    out = tmp_path / "labels.csv"
    result = runner.invoke(app, ["labels", str(kaggle_dir / "solutions.csv"), "--preset", "smooth-featured",
                                 "--min-share", "0.6", "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = pd.read_csv(out)
    assert len(written) == 30 and set(written["label"].dropna()) <= {"smooth", "featured"}
    result = runner.invoke(app, ["prepare", str(kaggle_dir / "images"), "--labels", str(kaggle_dir / "solutions.csv"),
                                 "--out", str(tmp_path / "p"), "--size", "32", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "images found" in result.output and (tmp_path / "p" / "skipped.csv").exists()


def flat(result) -> str:
    return " ".join(result.output.split())  # rich wraps long lines


def test_errors_are_messages_not_tracebacks(kaggle_dir, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    result = runner.invoke(app, ["labels", str(bad)])
    assert result.exit_code == 2 and "wrong header" in flat(result)
    result = runner.invoke(app, ["labels", str(kaggle_dir / "solutions.csv"), "--preset", "nonsense"])
    assert result.exit_code == 2 and "unknown preset 'nonsense'" in flat(result)
    result = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 2 and "not a run folder" in flat(result)


@needs_real_data
def test_labels_seed_on_real_sample_prints_original_counts():
    result = runner.invoke(app, ["labels", str(REAL_DATA / "gz-kaggle-sample" / "solutions.csv"), "--preset", "seed"])
    assert result.exit_code == 0
    lines = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in result.output.splitlines()
             if line.count("│") == 3}
    assert lines["elliptical (meets rule)"] == "45" and lines["lenticular (meets rule)"] == "36"
    assert lines["spiral (meets rule)"] == "41" and lines["conflicts (exclude)"] == "6"
    assert "6 galaxies meet several rules: elliptical+lenticular" in result.output


def test_prepare_for_a_model_takes_its_size_and_field_of_view(tmp_path):
    # the seed models need 150 px of the central 150: prepare's 64 px default would be refused by them
    from zoomorph.data.dataset import PreparedData
    from zoomorph.data.synthetic import make_synthetic

    solutions = make_synthetic(tmp_path / "set", 40, seed=3, workers=1)
    result = runner.invoke(app, ["prepare", str(tmp_path / "set" / "images"), "--labels", str(solutions),
                                 "--model", "seed-model2", "--out", str(tmp_path / "p"), "--workers", "0"])
    assert result.exit_code == 0, result.output
    data = PreparedData.load(tmp_path / "p")
    assert (data.image_size, data.fov) == (150, 150) and data.images.shape[1:] == (150, 150, 3)


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    refused = runner.invoke(app, ["train", str(tmp_path / "nothing")])
    assert refused.exit_code == 2 and "error:" in refused.output and "Traceback" not in refused.output
    assert "not a prepared data folder" in refused.output
    assert len(refused.output.strip().splitlines()) == 1, refused.output  # however long its path

    def broken(*args, **kwargs):
        raise ValueError("an internal bug, not the user's doing")

    import zoomorph.api

    monkeypatch.setattr(zoomorph.api, "train", broken)
    crashed = runner.invoke(app, ["train", str(tmp_path / "nothing")])
    assert crashed.exit_code == 1 and isinstance(crashed.exception, ValueError)  # not dressed up as exit 2
