import json
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from tiny_runs import TINY_MODEL

from zoomorph.evaluation.compare import compare_runs, write_compare_html
from zoomorph.models import create_model
from zoomorph.runs import RunConfig


def hand_made_run(path, *, model="convnet", head="classes", split="val", split_hash="aaaa", summary=None,
                  accuracy=0.8, tta=None, rmse=None, epochs=3):
    """A run folder written by hand: config, summary, history and metrics, no weights."""
    classes = ["elliptical", "spiral"]
    RunConfig(model, head, classes, 64, 207, "hubble", None, split_hash).save(path)
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))
    pd.DataFrame({"epoch": range(epochs), "train_loss": np.linspace(1, 0.5, epochs),
                  "val_loss": np.linspace(1.1, 0.6, epochs), "train_seconds": [4.0] * epochs,
                  "images_per_s": [100.0 + 10 * i for i in range(epochs)]}).to_csv(path / "history.csv", index=False)
    plain = {"accuracy": accuracy, "balanced_accuracy": accuracy - 0.1, "ece": 0.05,
             "ci": {"accuracy": {"estimate": accuracy, "low": accuracy - 0.04, "high": accuracy + 0.03}}}
    if rmse is not None:
        plain = {"rmse": rmse}
    variants = {"plain": plain} | ({"tta": {"accuracy": tta}} if tta is not None else {})
    metrics = {"run": path.name, "split": split, "split_hash": split_hash, "n": 100, "variants": variants}
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def test_one_row_per_run_with_the_values_of_its_files(tmp_path):
    a = hand_made_run(tmp_path / "a", summary={"parameters": 1234, "epochs": 7, "train_seconds": 70.5,
                                               "images_per_s": 321.0}, accuracy=0.8, tta=0.83)
    b = hand_made_run(tmp_path / "b", model=TINY_MODEL, accuracy=0.6, epochs=4)  # no summary.json
    c = hand_made_run(tmp_path / "c", model="votes-net", head="votes", rmse=0.095,
                      summary={"parameters": 99, "epochs": 2, "train_seconds": 1.0, "images_per_s": 5.0})
    table = compare_runs([a, b, c])
    assert table["run"].tolist() == ["a", "b", "c"]
    first = table.iloc[0]
    assert (first.model, first.parameters, first.epochs, first.train_seconds, first.images_per_s) == (
        "convnet", 1234, 7, 70.5, 321.0)
    assert (first.accuracy, first.accuracy_low, first.accuracy_high) == pytest.approx((0.8, 0.76, 0.83))
    assert first.balanced_accuracy == pytest.approx(0.7) and first.tta_accuracy == pytest.approx(0.83)
    assert first.input_size == 64 and first.split == "val" and first.split_hash == "aaaa"

    second = table.iloc[1]  # without summary.json: counted from the model and read from history.csv
    tiny = create_model(TINY_MODEL, num_classes=2, image_size=64)
    assert second.parameters == sum(p.numel() for p in tiny.parameters())
    assert (second.epochs, second.train_seconds, second.images_per_s) == (4, 16.0, 115.0)
    assert np.isnan(second.tta_accuracy) and np.isnan(second.rmse)

    third = table.iloc[2]
    assert third.rmse == pytest.approx(0.095) and np.isnan(third.accuracy) and np.isnan(third.ece)


def test_refuses_runs_evaluated_on_other_galaxies(tmp_path):
    a = hand_made_run(tmp_path / "run-a", split_hash="1111", summary={"parameters": 1})
    b = hand_made_run(tmp_path / "run-b", split_hash="2222", summary={"parameters": 1})
    with pytest.raises(ValueError, match="different") as err:
        compare_runs([a, b])
    assert all(s in str(err.value) for s in ("run-a", "run-b", "1111", "2222"))

    test_split = hand_made_run(tmp_path / "run-t", split="test", split_hash="1111", summary={"parameters": 1})
    with pytest.raises(ValueError, match="'test'"):
        compare_runs([a, test_split])
    with pytest.raises(ValueError, match="at least one"):
        compare_runs([])


def test_compare_page(tmp_path):
    runs = [hand_made_run(tmp_path / name, summary={"parameters": 10}, accuracy=acc)
            for name, acc in (("small", 0.7), ("big", 0.9))]
    text = write_compare_html(runs, tmp_path / "compare.html").read_text()

    class Page(HTMLParser):
        rows, images, urls = 0, 0, []

        def handle_starttag(self, tag, attrs):
            self.rows += tag == "tr"
            self.images += tag == "img"
            self.urls += [v for k, v in attrs if k in ("src", "href")]

    page = Page()
    page.feed(text)
    assert page.rows == 3 and page.images == 1  # header + 2 runs; overlaid curves
    assert all(u.startswith("data:image/png;base64,") for u in page.urls)
    assert "0.900 (0.860-0.930)" in text and "small" in text


def test_names_on_the_page_are_escaped(tmp_path):
    """A run folder's name is the user's text: it shows as text and never becomes markup."""
    runs = [hand_made_run(tmp_path / name, summary={"parameters": 10}) for name in ("<script>x", "b&c")]
    text = write_compare_html(runs, tmp_path / "compare.html").read_text()
    assert "<script>" not in text and "&lt;script&gt;x" in text and "b&amp;c" in text
