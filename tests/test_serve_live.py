"""zoomorph serve on a real socket (uvicorn on 127.0.0.1): streamed limits, the OpenAPI property test, a browser.

One server for the module, on a toy run (predict_toys, exported to ONNX once). The browser test drives
Debian's chromium and chromium-driver (.ci/run installs them with apt-get) and skips, saying so, only
where they are not installed.
"""

from __future__ import annotations

import csv
import io
import select
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from PIL import Image
from predict_toys import make_run, toy_model
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from conftest import REAL_DATA, jpeg_bytes
from zoomorph import runs
from zoomorph.serve.app import create_app
from zoomorph.serve.limits import Limits
from zoomorph.serve.model import ServedModel

pytestmark = pytest.mark.slow
LIMIT_MB = 1


class LiveServer:
    """uvicorn serving `app` in a thread, on a free loopback port."""

    def __init__(self, app):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started, "the server did not start"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runs, "build_model", toy_model)
        run = make_run(tmp_path_factory.mktemp("live-run"), model="toy-spatial")
        server = LiveServer(create_app(ServedModel(run), Limits(max_upload_mb=LIMIT_MB, timeout_s=2, max_images=8)))
        yield server
        server.stop()


def raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def response_of(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


PART = (b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.jpg\"\r\n"
        b"Content-Type: image/jpeg\r\n\r\n")


def test_a_streamed_upload_is_refused_as_it_passes_the_limit_not_after(live):
    sock = raw(live.port)
    sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(PART), PART))
    chunk, sent, answer = b"\xff" * 65536, 0, b""
    while sent < 64 * LIMIT_MB * 2**20:  # a body 64 times the limit, whose end is never sent
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(chunk)
        if select.select([sock], [], [], 0)[0]:
            break
    answer = response_of(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"upload_too_large" in answer and sent < 16 * LIMIT_MB * 2**20  # the kernel's buffers hold the rest
    assert httpx.get(live.url + "/healthz").status_code == 200


def test_a_declared_oversized_upload_is_refused_before_any_body(live):
    sock = raw(live.port)
    sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 b"Content-Length: 900000000\r\n\r\n")
    answer = response_of(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413") and b"1 MB (max_upload_mb)" in answer


def test_a_body_that_does_not_arrive_in_time_is_408(live):
    sock = raw(live.port)
    started = time.monotonic()
    sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{\"images\": [")
    answer = response_of(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 2 s" in answer
    assert time.monotonic() - started < 10
    assert httpx.get(live.url + "/readyz").status_code == 200


# ---------------------------------------------------------------- the API against its own schema

EXAMPLES = 25  # per endpoint and mode: ~20 s in all


def test_no_request_the_schema_allows_or_forbids_gets_a_5xx(live):
    """schemathesis generates requests from /openapi.json, valid ones (positive) and invalid ones
    (negative), for every operation; none may get a 5xx."""
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    seen: set[tuple] = set()
    assert {op.path for op in operations} >= {"/v1/classify", "/v1/model", "/healthz", "/readyz"}
    for operation in operations:
        # a GET without parameters has nothing to get wrong: no negative requests for it
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if operation.method == "post" else \
            (GenerationMode.POSITIVE,)
        for mode in modes:
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def no_5xx(case):
                response = case.call_and_validate(checks=[not_a_server_error])
                seen.add((operation.path, case.media_type, response.status_code))  # noqa: B023 (run at once)

            no_5xx()
    classify = {(media, status) for path, media, status in seen if path == "/v1/classify"}
    assert {media for media, _ in classify} == {"multipart/form-data", "application/json"}, seen
    assert {status for _, status in classify} >= {422}, seen  # what random bytes deserve


# ---------------------------------------------------------------- a real browser

def galaxy(tmp_path: Path) -> Path:
    """A real galaxy from ../shared/data when it is there, else a synthetic one."""
    real = sorted((REAL_DATA / "gz-kaggle-q1" / "images").glob("*.jpg"))[:1]
    path = tmp_path / (real[0].name if real else "synthetic-galaxy.jpg")
    path.write_bytes(real[0].read_bytes() if real else jpeg_bytes(seed=3))
    return path


def chrome(downloads: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them with "
                    "apt-get install chromium chromium-driver; here it could not)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    return browser


def test_the_page_in_a_browser(live, tmp_path):
    """Upload a galaxy, read class and bars, open Grad-CAM (screenshot: tmp_path/grad-cam.png), get the CSV."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    image, downloads = galaxy(tmp_path), tmp_path / "downloads"
    downloads.mkdir()
    expected = httpx.post(live.url + "/v1/classify", files=[("files", (image.name, image.read_bytes()))])
    expected = expected.json()["results"][0]
    browser = chrome(downloads)
    try:
        wait = WebDriverWait(browser, 30)
        browser.get(live.url + "/")
        wait.until(lambda b: "toy-spatial" in b.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "files").send_keys(str(image))
        row = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "tr.result")))
        assert row.get_attribute("data-name") == image.name
        assert row.find_element(By.CSS_SELECTOR, ".predicted").text == expected["predicted"]
        bars = {b.get_attribute("data-class"): float(b.get_attribute("data-p"))
                for b in row.find_elements(By.CSS_SELECTOR, ".prob")}
        assert bars == pytest.approx(expected["probabilities"], abs=1e-6)
        assert row.find_element(By.CSS_SELECTOR, ".entropy").text == f"{expected['entropy']:.3f}"

        row.find_element(By.CSS_SELECTOR, "button.cam").click()
        wait.until(lambda b: b.find_element(By.ID, "cam").get_attribute("open") is not None)
        wait.until(lambda b: b.find_element(By.ID, "cam-image").get_attribute("src").startswith("data:image/png"))
        wait.until(lambda b: b.execute_script("return document.getElementById('cam-image').naturalWidth") == 256)
        shot = tmp_path / "grad-cam.png"
        browser.save_screenshot(str(shot))
        pixels = np.asarray(Image.open(shot).convert("RGB"))
        assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # not blank
        browser.find_element(By.ID, "cam-close").click()
        wait.until(lambda b: b.find_element(By.ID, "cam").get_attribute("open") is None)

        browser.find_element(By.ID, "csv").click()
        target = downloads / "zoomorph-predictions.csv"
        wait.until(lambda b: target.exists() and target.stat().st_size > 0)
    finally:
        browser.quit()
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert len(rows) == 1 and rows[0]["name"] == image.name and rows[0]["predicted"] == expected["predicted"]
    assert {k[2:]: float(v) for k, v in rows[0].items() if k.startswith("p_")} == \
        pytest.approx(expected["probabilities"], abs=1e-6)
