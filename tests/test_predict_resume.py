"""Kill -9 a prediction half-way, rerun the same command: every input once, the same as a run never killed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from predict_toys import kill_after_first_part, make_run, toy_model, write_images

import zoomorph
from zoomorph import runs
from zoomorph.predict import predict

pytestmark = pytest.mark.slow

N_IMAGES = 2500
OPTIONS = dict(chunk_size=256, batch_size=64, workers=2, progress=False)

# The command under test, as a script; `slow` stretches each batch so the kill lands mid-run.
SCRIPT = """
import json, sys, time
sys.path.insert(0, {tests!r})
from predict_toys import toy_model
from zoomorph import runs
from zoomorph.predict import predict
from zoomorph.predict.results import ResultRows
runs.build_model = toy_model
if sys.argv[1] == "slow":
    of_batch = ResultRows.of_batch
    ResultRows.of_batch = lambda self, *a, **k: (time.sleep(0.02), of_batch(self, *a, **k))[1]
summary = predict({run!r}, [{images!r}], {out!r}, **{options!r})
print(json.dumps(dict(total=summary.total, predicted=summary.predicted, errors=summary.errors)))
"""


def test_sigkill_then_rerun_gives_every_input_once(tmp_path, monkeypatch):
    images = tmp_path / "images"
    write_images(images, range(200000, 200000 + N_IMAGES))
    (images / "299999.jpg").write_bytes(b"\xff\xd8 truncated")
    run, out = make_run(tmp_path, "toy-spatial"), tmp_path / "predictions.parquet"
    script = tmp_path / "predict_script.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), run=str(run), images=str(images),
                                    out=str(out), options=OPTIONS))
    parts = tmp_path / "predictions.parquet.parts"
    done_before = kill_after_first_part([str(script), "slow"], parts)
    assert not out.exists() and 1 <= done_before < -(-(N_IMAGES + 1) // 256)  # killed mid-run

    env = os.environ | {"PYTHONPATH": str(Path(zoomorph.__file__).parents[1])}
    rerun = subprocess.run([sys.executable, str(script), "fast"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["total"] == N_IMAGES + 1 and summary["errors"] == 1
    assert summary["predicted"] <= N_IMAGES + 1 - 256 * done_before  # finished parts were not redone
    assert not parts.exists()

    monkeypatch.setattr(runs, "build_model", toy_model)
    reference = pd.read_parquet(predict(run, [images], tmp_path / "reference.parquet", **OPTIONS).out)
    resumed = pd.read_parquet(out)
    assert resumed["path"].is_unique and len(resumed) == N_IMAGES + 1
    pd.testing.assert_frame_equal(resumed, reference)
