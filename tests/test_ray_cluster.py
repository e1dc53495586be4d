"""engine="ray" on a two-node cluster (ray.cluster_utils.Cluster: two raylets on this machine, 1 CPU each):
the same rows as the local engine, with the work done on both nodes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from predict_toys import CLASSES, ray_case

from zoomorph.predict import predict, ray_engine

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

MB = 1024 * 1024


@pytest.fixture
def two_nodes():
    # 1 CPU per node, 100 MB of object store each: small, as the machine is shared.
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args=dict(num_cpus=1,
                                                                               object_store_memory=100 * MB))
    try:
        worker = cluster.add_node(num_cpus=1, object_store_memory=100 * MB)
        cluster.wait_for_nodes()
        yield cluster, {cluster.head_node.node_id, worker.node_id}
    finally:
        cluster.shutdown()


def _recording_stages(monkeypatch, log_dir):
    """Wrap the pipeline's decode function and inference actor so that each writes, per Ray batch, the node
    it ran on and the listing rows it handled to a file in log_dir (both nodes share this disk). The
    wrappers are defined here, not importable, so Ray ships them by value to the workers."""
    log = str(log_dir)
    decode, infer = ray_engine._decode, ray_engine._Infer

    def note(stage, rows):
        import os
        import uuid

        import ray

        with open(os.path.join(log, f"{stage}-{uuid.uuid4().hex}.json"), "w") as f:
            json.dump({"stage": stage, "node": ray.get_runtime_context().get_node_id(),
                       "rows": [int(r) for r in rows]}, f)

    def recorded_decode(batch, size, fov):
        out = decode(batch, size, fov)
        note("decode", out["row"])
        return out

    class RecordedInfer(infer):
        def __call__(self, batch):
            out = super().__call__(batch)
            note("infer", batch["row"])
            return out

    monkeypatch.setattr(ray_engine, "_decode", recorded_decode)
    monkeypatch.setattr(ray_engine, "_Infer", RecordedInfer)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own, about its settings
def test_ray_engine_on_two_nodes_equals_local_engine(tmp_path, monkeypatch, two_nodes):
    cluster, node_ids = two_nodes
    images, run, local = ray_case(tmp_path)
    log_dir = tmp_path / "stages"
    log_dir.mkdir()
    _recording_stages(monkeypatch, log_dir)
    # One chunk per dataset: 3 datasets, each with an actor of its own (Ray Data fuses decode into the actor).
    # Each actor takes the one CPU of a node, and the last dataset's actor still holds its node's CPU when
    # the next one is placed, so the datasets alternate between the nodes: both take part.
    monkeypatch.setattr(ray_engine, "CHUNKS_PER_DATASET", 1)
    summary = predict(run, [images], tmp_path / "ray.parquet", engine="ray", ray_address=cluster.address,
                      chunk_size=128, batch_size=64, progress=False)
    distributed = pd.read_parquet(summary.out)
    assert summary.total == 301 and summary.errors == 1 and summary.backend == "torch"
    assert distributed["id"].tolist() == local["id"].tolist()
    assert distributed["error"].tolist() == local["error"].tolist()
    probabilities = [f"p_{c}" for c in CLASSES]
    np.testing.assert_allclose(distributed[probabilities], local[probabilities], atol=1e-5)
    assert (distributed["predicted"].fillna("-") == local["predicted"].fillna("-")).all()

    # Where the work ran: every row decoded once and inferred once, and both nodes took part.
    notes = [json.loads(p.read_text()) for p in log_dir.glob("*.json")]
    for stage in ("decode", "infer"):
        rows = sorted(r for n in notes if n["stage"] == stage for r in n["rows"])
        assert rows == list(range(301)), f"{stage}: {len(rows)} rows, {len(set(rows))} distinct, of 301"
    used = {n["node"] for n in notes}
    assert used <= node_ids, (used, node_ids)
    assert used == node_ids, f"all the work ran on one node: {[n['stage'] for n in notes]} on {used}"
