"""engine="ray": the same rows as the local engine; and predict works without Ray installed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from predict_toys import CLASSES, ray_case

from zoomorph.predict import predict, ray_engine


def test_predict_imports_and_explains_without_ray(tmp_path):
    # A fresh interpreter where `import ray` fails, as on a machine without the extra.
    code = ("import sys; sys.modules['ray'] = None\n"
            "import zoomorph.predict.engine\n"
            "from zoomorph.predict.ray_engine import ray_results\n"
            "from zoomorph.predict.results import PredictOptions\n"
            "try:\n    next(ray_results(None, [], batch_size=1, actors=None, ray_address=None,"
            " options=PredictOptions()))\n"
            "except ImportError as err:\n    print(err)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install zoomorph[ray]" in done.stdout, done.stderr


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own, about its settings
def test_ray_engine_equals_local_engine(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    images, run, local = ray_case(tmp_path)
    monkeypatch.setattr(ray_engine, "CHUNKS_PER_DATASET", 2)  # the 3 chunks go to Ray in two datasets
    summary = predict(run, [images], tmp_path / "ray.parquet", engine="ray", chunk_size=128, batch_size=64,
                      progress=False)
    distributed = pd.read_parquet(summary.out)
    assert summary.total == 301 and summary.errors == 1 and summary.backend == "torch"  # auto, on Ray
    assert distributed["id"].tolist() == local["id"].tolist()
    assert distributed["error"].tolist() == local["error"].tolist()
    probabilities = [f"p_{c}" for c in CLASSES]
    np.testing.assert_allclose(distributed[probabilities], local[probabilities], atol=1e-5)
    assert (distributed["predicted"].fillna("-") == local["predicted"].fillna("-")).all()
