"""Shared fixtures: small synthetic inputs made on the fly, and the optional real data."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from zoomorph.schema import ANSWER_COLUMNS, to_cumulative

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_real_data = pytest.mark.skipif(not REAL_DATA.exists(), reason=f"real Galaxy Zoo data not found at {REAL_DATA}")


def jpeg_bytes(size=(424, 424), mode="RGB", seed=0, fmt="JPEG") -> bytes:
    """A blob on noise: enough structure for crop/resize checks."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    blob = 200 * np.exp(-(((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / (2 * (min(w, h) / 10) ** 2)))
    rgb = np.clip(blob[..., None] + rng.normal(20, 5, (h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(rgb).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, quality=90)
    return buf.getvalue()


def random_solutions(ids, seed=0) -> pd.DataFrame:
    """Tree-consistent cumulative fractions for `ids` (Dirichlet shares per question)."""
    from zoomorph.schema import QUESTIONS

    rng = np.random.default_rng(seed)
    shares = {}
    for q in QUESTIONS:
        block = rng.dirichlet(np.ones(len(q.answers)), size=len(ids))
        shares.update({c: block[:, i] for i, c in enumerate(q.columns)})
    cond = pd.DataFrame(shares, index=pd.Index([str(i) for i in ids], name="GalaxyID"))[ANSWER_COLUMNS]
    return to_cumulative(cond)


@pytest.fixture
def kaggle_dir(tmp_path) -> Path:
    """A tiny Kaggle-layout folder: 30 JPEGs and a solutions.csv covering them."""
    images = tmp_path / "images"
    images.mkdir()
    ids = list(range(100000, 100030))
    for i, gid in enumerate(ids):
        (images / f"{gid}.jpg").write_bytes(jpeg_bytes(seed=i))
    random_solutions(ids).to_csv(tmp_path / "solutions.csv")
    return tmp_path


@pytest.fixture
def toys(monkeypatch):
    """Runs build their models with predict_toys.toy_model: use with pytestmark = pytest.mark.usefixtures("toys")."""
    from predict_toys import toy_model

    from zoomorph import runs

    monkeypatch.setattr(runs, "build_model", toy_model)
