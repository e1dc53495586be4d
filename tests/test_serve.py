"""zoomorph serve through its API client: every endpoint, answers equal to predict's, every limit and bad input.

The server's toy runs (predict_toys) are made and exported to ONNX once for the module (~5 s).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from predict_toys import jpeg, make_run, toy_model

from zoomorph import api, runs
from zoomorph.predict import predict
from zoomorph.runs import Run
from zoomorph.serve.app import create_app
from zoomorph.serve.limits import Limits
from zoomorph.serve.model import ServedModel

pytestmark = pytest.mark.slow  # the module's ONNX export


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    """(classes run: a convolution and dropout; votes run), their models built by predict_toys."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runs, "build_model", toy_model)
        root = tmp_path_factory.mktemp("serve-runs")
        yield make_run(root, model="toy-spatial"), make_run(root, model="toy-pooled", head="votes")


@pytest.fixture(scope="module")
def served(toy_runs):
    return ServedModel(toy_runs[0])  # auto: the ONNX graph, exported now


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Seven images as predict reads them: JPEGs of other sizes, a grey one, a PNG."""
    folder = tmp_path_factory.mktemp("serve-images")
    for seed in range(5):
        (folder / f"{700 + seed}.jpg").write_bytes(jpeg(seed, side=64 + 16 * seed))
    grey = Image.open(io.BytesIO(jpeg(9, side=80))).convert("L")
    grey.save(folder / "709.jpg", format="JPEG")
    (folder / "710.png").write_bytes(jpeg(10, fmt="PNG"))
    return folder


def client(model: ServedModel, **limits) -> TestClient:
    return TestClient(create_app(model, Limits(**limits)))


def multipart(paths: list[Path], **fields) -> dict:
    return {"files": [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths],
            "data": {k: str(v).lower() for k, v in fields.items()}}


def by_name(results: list[dict]) -> dict[str, dict]:
    return {r["name"]: r for r in results}


def predicted_rows(run: Path, folder: Path, out: Path, **options) -> dict[str, pd.Series]:
    table = pd.read_parquet(predict(run, [folder], out, workers=0, progress=False, **options).out)
    return {Path(path).name: row for path, (_, row) in zip(table["path"], table.iterrows())}


def assert_same(answer: dict, row: pd.Series, values: str = "probabilities", prefix: str = "p_") -> None:
    for name, value in answer[values].items():
        assert abs(value - row[prefix + name]) < 1e-6, name
    assert answer["predicted"] == row["predicted"]
    for key in ("entropy", "std", "mutual_info"):
        if key in row:
            assert abs(answer[key] - row[key]) < 1e-6, key


# ---------------------------------------------------------------- endpoints


def test_model_health_ready_page_and_openapi(served, toy_runs):
    with client(served, max_images=5) as c:
        info = c.get("/v1/model").json()
        assert info["classes"] == ["elliptical", "spiral", "other"] and info["image_size"] == 16
        assert info["backend"] == "onnx" and info["mc_dropout"] is True and info["limits"]["max_images"] == 5
        assert info["weights_sha256"] == Run.open(toy_runs[0]).weights_digest
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        page = c.get("/")
        assert page.status_code == 200 and "Drop galaxy images" in page.text
        assert "http://" not in page.text and "https://" not in page.text  # works offline: nothing fetched
        assert "default-src 'none'" in page.headers["content-security-policy"]
        schema = c.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert {"ClassifyRequest", "ClassifyResponse", "ImageResult", "ErrorResponse", "ModelInfo"} <= set(components)
    classify = schema["paths"]["/v1/classify"]["post"]
    assert set(classify["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert {"200", "413", "415", "422", "503"} <= set(classify["responses"])


def test_answers_equal_predict_with_the_same_backend(served, toy_runs, images, tmp_path):
    paths = sorted(images.iterdir())
    rows = predicted_rows(toy_runs[0], images, tmp_path / "plain.parquet", backend="onnx")
    tta_rows = predicted_rows(toy_runs[0], images, tmp_path / "tta.parquet", backend="onnx", tta=True)
    with client(served) as c:
        plain = c.post("/v1/classify", **multipart(paths))
        tta = c.post("/v1/classify", **multipart(paths, tta=True))
    assert plain.status_code == 200 and plain.json()["backend"] == "onnx"
    for answers, expected in ((plain.json()["results"], rows), (tta.json()["results"], tta_rows)):
        assert [a["name"] for a in answers] == [p.name for p in paths]  # in the order sent
        for answer in answers:
            assert_same(answer, expected[answer["name"]])
    notes = by_name(plain.json()["results"])
    assert "PNG content" in notes["710.png"]["note"] and "converted from L" in notes["709.jpg"]["note"]
    assert not any(a["fractions"] or a["saliency"] or a["error"] for a in plain.json()["results"])


def test_releasing_the_memory_arena_leaves_every_answer_as_it_was(served, images):
    files = sorted(images.glob("*.jpg"))
    with client(served) as c:
        before = c.post("/v1/classify", **multipart(files)).json()["results"]
        assert served.backend == "onnx" and callable(served.forward.release_memory)
        served.release_memory()  # what the server does once it goes quiet
        after = c.post("/v1/classify", **multipart(files)).json()["results"]
    assert after == before


def test_mc_dropout_answers_equal_predict(served, toy_runs, images, tmp_path):
    rows = predicted_rows(toy_runs[0], images, tmp_path / "mc.parquet", backend="torch", mc_samples=4)
    with client(served) as c:
        answer = c.post("/v1/classify", **multipart(sorted(images.iterdir()), mc_samples=4)).json()
    assert answer["mc_samples"] == 4
    for result in answer["results"]:
        assert result["std"] is not None and result["mutual_info"] is not None
        assert_same(result, rows[result["name"]])


def test_votes_run_answers_fractions_and_the_presets_class_as_predict(toy_runs, images, tmp_path):
    rows = predicted_rows(toy_runs[1], images, tmp_path / "votes.parquet", backend="torch", preset="hubble")
    with client(ServedModel(toy_runs[1], backend="torch", preset="hubble")) as c:
        assert c.get("/v1/model").json()["preset"] == "hubble"
        answers = c.post("/v1/classify", **multipart(sorted(images.iterdir()))).json()["results"]
    for answer in answers:
        assert len(answer["fractions"]) == 37 and answer["probabilities"] is None
        row = rows[answer["name"]]
        assert all(abs(v - row[k]) < 1e-6 for k, v in answer["fractions"].items())
        assert answer["predicted"] == (row["predicted"] if isinstance(row["predicted"], str) else None)  # no rule met
        assert abs(answer["entropy"] - row["entropy"]) < 1e-6


def test_json_base64_answers_as_multipart_and_saliency_is_a_png(served, images):
    paths = sorted(images.iterdir())[:3]
    body = {"images": [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in paths],
            "saliency": True}
    body["images"][0]["data"] = "data:image/jpeg;base64," + body["images"][0]["data"]  # as a browser reads it
    with client(served) as c:
        as_json = c.post("/v1/classify", json=body).json()["results"]
        as_form = c.post("/v1/classify", **multipart(paths)).json()["results"]
    for a, b in zip(as_json, as_form):
        assert a["name"] == b["name"] and a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)
        png = base64.b64decode(a["saliency"].removeprefix("data:image/png;base64,"))
        overlay = np.asarray(Image.open(io.BytesIO(png)))
        assert overlay.shape == (256, 256, 3) and overlay.std() > 5  # a picture, not a blank


# ---------------------------------------------------------------- bad input and limits


def png_bomb(side: int = 100_000) -> bytes:
    """A PNG whose header says side x side pixels, in a few dozen bytes: decoding it would take 30 GB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def classify_unnamed(served, data: bytes) -> dict:
    with client(served) as c:
        return c.post("/v1/classify", files=[("files", ("upload", data, "application/octet-stream"))]).json()


def test_each_unreadable_image_gets_its_own_error_and_the_others_are_answered(served, images):
    good = (images / "700.jpg").read_bytes()
    png = (images / "710.png").read_bytes()
    sent = {"good.jpg": good, "text.jpg": b"GIF89a, or just words", "truncated.jpg": good[:len(good) // 2],
            "empty.jpg": b"", "bomb.png": png_bomb(), "big.png": jpeg(3, side=600, fmt="PNG"),
            "png-named.jpg": png, "../../etc/passwd": good}
    files = [("files", (name, data, "image/jpeg")) for name, data in sent.items()]
    with client(served, max_pixels=300_000) as c:
        answer = c.post("/v1/classify", files=files)
        assert answer.status_code == 200
        results = by_name(answer.json()["results"])
        reference = by_name(c.post("/v1/classify", files=[("files", ("a.png", png, "image/png"))]).json()["results"])
    assert results["good.jpg"]["error"] is None and results["good.jpg"]["predicted"]
    assert "not a JPEG, PNG, TIFF or FITS image" in results["text.jpg"]["error"]
    assert "truncated" in results["truncated.jpg"]["error"]
    assert results["empty.jpg"]["error"] == "empty file (0 bytes)"
    assert "decompression bomb" in results["bomb.png"]["error"]
    assert "600 x 600 pixels is more than the limit of 300,000" in results["big.png"]["error"]
    # content sniffed from the bytes: a PNG named .jpg is refused by name; under a name without a suffix
    # it is read as the PNG it is
    assert "its name says JPEG but its bytes are a PNG image" in results["png-named.jpg"]["error"]
    assert results["../../etc/passwd"]["error"] is None
    unnamed = by_name(classify_unnamed(served, png)["results"])["upload"]
    assert unnamed["probabilities"] == reference["a.png"]["probabilities"]
    assert results["../../etc/passwd"]["predicted"] == results["good.jpg"]["predicted"]  # a name, never a path


BAD_REQUESTS = {
    # case: (limits, request kwargs, status, error code, words in the message)
    "upload too large": ({"max_upload_mb": 0.01}, {"files": [("files", ("a.jpg", b"\xff\xd8\xff" + b"x" * 20000))]},
                         413, "upload_too_large", "0.01 MB"),
    "too many images": ({"max_images": 2}, {"files": [("files", (f"{i}.jpg", jpeg(i))) for i in range(3)]},
                        413, "too_many_images", "at most 2 per request"),
    "too many images (JSON)": ({"max_images": 2}, {"json": {"images": [{"data": "AAAA"}] * 3}},
                               413, "too_many_images", "3 images"),
    "not multipart or JSON": ({}, {"content": b"hello", "headers": {"content-type": "text/plain"}},
                              415, "unsupported_media_type", "multipart/form-data"),
    "no content type": ({}, {"content": b"hello"}, 415, "unsupported_media_type", "application/json"),
    "wrong field name": ({}, {"files": [("file", ("a.jpg", jpeg(0)))]}, 422, "bad_request", "'file'"),
    "no files": ({}, {"data": {"tta": "true"}, "files": []}, 415, "unsupported_media_type", "multipart"),
    "a text field for files": ({}, {"data": {"files": "a.jpg"}, "files": [("x", ("a.jpg", b""))]},
                               422, "bad_request", "'x'"),
    "wrong JSON field": ({}, {"json": {"image": [{"data": "AAAA"}]}}, 422, "bad_request", "images: Field required"),
    "bad JSON": ({}, {"content": b'{"images": [', "headers": {"content-type": "application/json"}},
                 422, "bad_request", "Invalid JSON"),
    "JSON not an object": ({}, {"json": [1, 2]}, 422, "bad_request", "bad request body"),
    "no images (JSON)": ({}, {"json": {"images": []}}, 422, "bad_request", "at least 1 item"),
    "base64 that is not": ({}, {"json": {"images": [{"name": "x.jpg", "data": "not base64!"}]}},
                           422, "no_readable_image", "x.jpg: data is not valid base64"),
    "not an image": ({}, {"files": [("files", ("a.jpg", b"<html>"))]}, 422, "no_readable_image",
                     "a.jpg: not a JPEG"),
    "zero bytes": ({}, {"files": [("files", ("a.jpg", b""))]}, 422, "no_readable_image", "empty file"),
    "PNG named .jpg": ({}, {"files": [("files", ("a.jpg", jpeg(2, fmt="PNG")))]}, 422, "no_readable_image",
                       "a.jpg: its name says JPEG but its bytes are a PNG"),
    "truncated JPEG": ({}, {"files": [("files", ("a.jpg", jpeg(1)[:300]))]}, 422, "no_readable_image", "truncated"),
    "decompression bomb": ({}, {"files": [("files", ("a.png", png_bomb()))]}, 422, "no_readable_image", "bomb"),
    "mc_samples 1": ({}, {"files": [("files", ("a.jpg", jpeg(0)))], "data": {"mc_samples": "1"}},
                     422, "bad_request", "mc_samples=1"),
    "mc_samples over the limit": ({"max_mc_samples": 8}, {"json": {"images": [{"data": "AAAA"}], "mc_samples": 9}},
                                  422, "bad_request", "2 to 8"),
    "mc_samples not a number": ({}, {"files": [("files", ("a.jpg", jpeg(0)))], "data": {"mc_samples": "lots"}},
                                422, "bad_request", "whole number"),
    "tta not a flag": ({}, {"files": [("files", ("a.jpg", jpeg(0)))], "data": {"tta": "maybe"}},
                       422, "bad_request", "tta='maybe'"),
    "too many saliency maps": ({"max_saliency": 1}, {"files": [("files", (f"{i}.jpg", jpeg(i))) for i in range(2)],
                                                     "data": {"saliency": "true"}}, 422, "bad_request", "at most 1"),
    "malformed multipart": ({}, {"content": b"--x\r\nnonsense", "headers": {"content-type": "multipart/form-data"}},
                            400, "bad_multipart", "boundary"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_every_limit_and_bad_request_is_a_4xx_json_error_and_the_server_goes_on(served, case):
    limits, request, status, code, words = BAD_REQUESTS[case]
    with client(served, **limits) as c:
        answer = c.post("/v1/classify", **request)
        assert answer.status_code == status, answer.text
        error = answer.json()
        assert error["error"] == code and words in error["message"], error
        assert error["request_id"] == answer.headers["x-request-id"]
        assert "Traceback" not in answer.text
        assert c.post("/v1/classify", files=[("files", ("ok.jpg", jpeg(5)))]).status_code == 200
        assert c.get("/healthz").status_code == 200


def test_unknown_paths_and_methods_are_json_errors(served):
    with client(served) as c:
        assert c.get("/v1/nothing").json()["error"] == "not_found"
        assert c.get("/v1/classify").status_code == 405 and c.get("/v1/classify").json()["error"] == \
            "method_not_allowed"


def gated(monkeypatch, model: ServedModel) -> tuple[threading.Event, threading.Event]:
    """Hold every model call until `release` is set; `entered` says one is being held."""
    entered, release, samples = threading.Event(), threading.Event(), model.samples

    def held(pixels, options):
        entered.set()
        assert release.wait(30)
        return samples(pixels, options)

    monkeypatch.setattr(model, "samples", held)
    return entered, release


def in_thread(fn, *args, **kwargs) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn(*args, **kwargs)))
    thread.start()
    return thread, out


def test_a_full_queue_is_503_with_retry_after_at_once(served, monkeypatch):
    entered, release = gated(monkeypatch, served)
    with client(served, queue=1) as c:
        thread, first = in_thread(c.post, "/v1/classify", **multipart_bytes([jpeg(0)]))
        assert entered.wait(10)
        started = time.perf_counter()
        refused = c.post("/v1/classify", **multipart_bytes([jpeg(1)]))
        # at once: not after the 30 s timeout_s it would wait for a place (5 s: slack for a loaded machine)
        assert time.perf_counter() - started < 5
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"] == "busy" and "queue=1" in refused.json()["message"]
        assert c.get("/readyz").status_code == 503
        release.set()
        thread.join(10)
        assert first[0].status_code == 200
        assert c.post("/v1/classify", **multipart_bytes([jpeg(1)])).status_code == 200
        assert c.get("/readyz").status_code == 200


def test_no_answer_in_time_is_503_and_the_server_goes_on(served, monkeypatch):
    entered, release = gated(monkeypatch, served)
    with client(served, timeout_s=0.3) as c:
        answer = c.post("/v1/classify", **multipart_bytes([jpeg(0)]))
        assert answer.status_code == 503 and "no answer within 0.3 s" in answer.json()["message"]
        release.set()
        assert c.post("/v1/classify", **multipart_bytes([jpeg(0)])).status_code == 200


def multipart_bytes(blobs: list[bytes]) -> dict:
    return {"files": [("files", (f"{i}.jpg", b, "image/jpeg")) for i, b in enumerate(blobs)]}


def test_concurrent_requests_share_model_calls_and_get_their_own_answers(served, monkeypatch):
    with client(served) as c:
        alone = [c.post("/v1/classify", **multipart_bytes([jpeg(i)])).json()["results"][0] for i in range(12)]
    entered, release = gated(monkeypatch, served)
    with client(served, queue=64) as c:
        batcher = c.app.state.batcher
        threads = [in_thread(c.post, "/v1/classify", **multipart_bytes([jpeg(i)])) for i in range(12)]
        assert entered.wait(10)
        deadline = time.perf_counter() + 10
        while batcher.waiting + 1 < 12 and time.perf_counter() < deadline:  # all queued behind the held call
            time.sleep(0.01)
        release.set()
        for thread, _ in threads:
            thread.join(10)
        assert batcher.images == 12 and batcher.batches == 2  # the held one, then the other 11 at once
    for i, (_, out) in enumerate(threads):
        assert out[0].json()["results"][0]["probabilities"] == pytest.approx(alone[i]["probabilities"], abs=1e-6)


def test_an_internal_error_reaches_the_client_without_a_traceback(served, monkeypatch, caplog):
    def broken(samples):
        raise RuntimeError("secret detail at /srv/data")

    monkeypatch.setattr(served, "answers", broken)
    with caplog.at_level(logging.INFO, logger="zoomorph.serve"), client(served) as c:
        answer = c.post("/v1/classify", **multipart_bytes([jpeg(0)]))
        assert answer.status_code == 500 and answer.json()["error"] == "internal_error"
        assert "secret" not in answer.text and "Traceback" not in answer.text
        request_id = answer.headers["x-request-id"]
        assert request_id in answer.json()["message"]
        monkeypatch.undo()
        assert c.post("/v1/classify", **multipart_bytes([jpeg(0)])).status_code == 200
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failed and request_id in failed[0].getMessage() and "secret detail" in failed[0].exc_text


def test_every_request_is_logged_with_id_size_and_latency(served, caplog):
    with caplog.at_level(logging.INFO, logger="zoomorph.serve"), client(served) as c:
        answer = c.post("/v1/classify", **multipart_bytes([jpeg(0), jpeg(1)]))
        refused = c.post("/v1/classify", content=b"x", headers={"content-type": "text/plain"})
    lines = [r.getMessage() for r in caplog.records if r.name == "zoomorph.serve"]
    ok = next(line for line in lines if line.startswith(answer.headers["x-request-id"]))
    assert " POST /v1/classify 200 " in ok and "images=2" in ok and ok.endswith("ms")
    assert int(ok.split("in=")[1].split("B")[0]) > 1000
    assert any(line.startswith(refused.headers["x-request-id"]) and " 415 " in line for line in lines)


# ---------------------------------------------------------------- the command and the extra


def test_api_serve_defaults_are_the_limits_defaults():
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(api.serve).parameters.items()}
    assert {k: defaults[k] for k in Limits().as_dict()} == Limits().as_dict()


def test_zoomorph_imports_without_the_extra_and_serve_says_how_to_install_it(tmp_path):
    code = """
import sys
for name in ("fastapi", "uvicorn", "multipart"):
    sys.modules[name] = None  # as if not installed
import zoomorph.api, zoomorph.cli
from typer.testing import CliRunner
result = CliRunner().invoke(zoomorph.cli.app, ["serve", sys.argv[1]])
print(result.exit_code, " ".join(result.output.split()))
"""
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("2 ") and "pip install 'zoomorph[serve]'" in done.stdout
    assert "fastapi" in done.stdout and "Traceback" not in done.stdout


def test_serve_refuses_a_damaged_run_before_listening(tmp_path, toy_runs):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(Path(toy_runs[0], "config.json").read_text())
    (broken / "model.pt").write_bytes(b"not torch")
    with pytest.raises(runs.RunFileError, match="is damaged"):
        ServedModel(broken)
    with pytest.raises(ValueError, match="unknown backend"):
        ServedModel(toy_runs[0], backend="tpu")
    assert json.loads(Path(toy_runs[0], "config.json").read_text())["head"] == "classes"
