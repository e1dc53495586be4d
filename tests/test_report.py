import json
from html.parser import HTMLParser

import pytest
from tiny_runs import make_run, prepared_folder

from zoomorph.evaluation.evaluate import evaluate_run
from zoomorph.evaluation.report import write_report
from zoomorph.runs import Run

SECTIONS = {"configuration", "data", "training", "metrics", "shifts", "confusion", "calibration", "samples", "saliency"}


class Page(HTMLParser):
    """Sections, images and every URL-bearing attribute of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.sections, self.images, self.urls, self.open_tags = [], [], [], []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        if tag == "img":
            self.images.append(attrs)
        self.urls += [v for k, v in attrs.items() if k in ("src", "href", "srcset", "action", "data") and v]
        if tag not in ("img", "meta", "br", "hr", "link", "input"):
            self.open_tags.append(tag)

    def handle_endtag(self, tag):
        assert self.open_tags.pop() == tag, f"</{tag}> closes something else"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared_folder(tmp_path_factory.mktemp("data"))


@pytest.mark.slow
def test_report_of_a_classes_run_is_one_self_contained_page(data, tmp_path):
    run = make_run(tmp_path / "run", data)
    assert not Run.open(run).metrics_file.exists()
    path = write_report(run)  # evaluates first: there were no metrics yet
    assert path == run / "report.html" and Run.open(run).metrics_file.exists()

    text = path.read_text()
    page = Page(text)
    assert page.open_tags == [] and set(page.sections) == SECTIONS
    # curves, confusion, calibration, class samples, 3 example grids, Grad-CAM, activations
    assert len(page.images) == 9
    assert all(img["src"].startswith("data:image/png;base64,") and img["alt"] for img in page.images)
    assert all(url.startswith("data:") for url in page.urls)
    assert "http://" not in text and "https://" not in text and "<script" not in text

    metrics = json.loads(Run.open(run).metrics_file.read_text())
    ci = metrics["variants"]["plain"]["ci"]["accuracy"]
    assert f"{ci['estimate']:.3f} ({ci['low']:.3f}-{ci['high']:.3f})" in text
    assert data.split_hash in text and "spiral" in text
    assert f"{Run.open(run).config.fov} Kaggle px" in text  # a fixed field of view, with its unit


@pytest.mark.slow
def test_report_of_a_votes_run_with_tta(data, tmp_path):
    run = make_run(tmp_path / "votes", data, head="votes")
    evaluate_run(run, tta=True, bootstrap=50)
    text = write_report(run, tmp_path / "elsewhere.html").read_text()
    page = Page(text)
    assert set(page.sections) == SECTIONS
    assert "RMSE per Galaxy Zoo question" in text and "TTA (8 dihedral views)" in text
    assert "votes run predicts fractions" in text  # calibration explains its absence
    assert all(url.startswith("data:") for url in page.urls)
    # curves, 2 confusion matrices (plain, TTA), class samples, Grad-CAM, activations
    assert len(page.images) == 6
