"""zoomorph cutouts: every row fetched once from a stub service on 127.0.0.1, politely, resumably, every
failure a row with its reason, and the catalogue written beside the cutouts read by `predict`.

Nothing here reaches another address: the stub listens on loopback (port 0), and a fixture refuses any
connection or name lookup that is not loopback.
"""

from __future__ import annotations

import inspect
import io
import os
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd
import pytest
from predict_toys import jpeg, make_run
from typer.testing import CliRunner

from zoomorph import api
from zoomorph.cli import app
from zoomorph.cutouts import download
from zoomorph.cutouts.fetch import Politeness, retry_after
from zoomorph.cutouts.services import SERVICES, cutout_url, service
from zoomorph.cutouts.table import file_names
from zoomorph.cutouts.valid import fits_problem, jpeg_problem
from zoomorph.errors import MissingExtra, ZoomorphError
from zoomorph.io.fits import fits_rgb

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Any lookup or connection to another address fails the test; no proxy is taken from the environment."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    lookup, connect = socket.getaddrinfo, socket.socket.connect

    def guarded_lookup(host, *args, **kwargs):
        assert host in LOOPBACK, f"a test tried to look up {host}"
        return lookup(host, *args, **kwargs)

    def guarded_connect(sock, address):
        assert address[0] in LOOPBACK, f"a test tried to connect to {address}"
        return connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", guarded_lookup)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


def fits_bytes(side: int = 32) -> bytes:
    from astropy.io import fits

    buffer = io.BytesIO()
    fits.PrimaryHDU(np.random.default_rng(0).normal(1, 0.1, (3, side, side)).astype(np.float32)).writeto(buffer)
    return buffer.getvalue()


class Stub:
    """A cutout service on 127.0.0.1 that answers each request by its `ra`, as the test planned.

    plans[ra] is a list of actions, one per request, the last one repeated (default "ok"):
    ok, 404, 500, 503, 429:<Retry-After s>, slow:<s> (then ok), truncated (half the body, its own length),
    cut (the full length announced, half sent, connection closed), html (a 200 error page).
    """

    def __init__(self):
        self.plans: dict[int, list[str]] = {}
        self.hits: list[tuple[float, str, dict]] = []  # (time.monotonic(), endpoint, query)
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                stub.answer(self)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda *args: None  # a client that gave up (timeouts) is no test failure
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def hits_for(self, ra: int) -> int:
        return sum(1 for _, _, query in self.hits if round(float(query["ra"])) == ra)

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlparse(handler.path)
        endpoint, query = url.path.rsplit("/", 1)[-1], {k: v[0] for k, v in parse_qs(url.query).items()}
        ra = round(float(query["ra"]))
        with self.lock:
            self.hits.append((time.monotonic(), endpoint, query))
            plan = self.plans.get(ra, ["ok"])
            action = plan.pop(0) if len(plan) > 1 else plan[0]
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            self.act(handler, action, fits_bytes() if endpoint == "fits-cutout" else jpeg(ra))
        finally:
            with self.lock:
                self.in_flight -= 1

    @staticmethod
    def act(handler: BaseHTTPRequestHandler, action: str, body: bytes) -> None:
        kind, _, value = action.partition(":")
        if kind in ("404", "500", "503"):
            handler.send_error(int(kind))
            return
        if kind == "429":
            handler.send_response(429)
            handler.send_header("Retry-After", value)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if kind == "slow":
            time.sleep(float(value))
        if kind == "html":
            body = b"<html><body>service unavailable</body></html>"
        sent = body[: len(body) // 2] if kind in ("truncated", "cut") else body
        handler.send_response(200)
        handler.send_header("Content-Type", "text/html" if kind == "html" else "image/jpeg")
        handler.send_header("Content-Length", str(len(body) if kind == "cut" else len(sent)))
        handler.end_headers()
        handler.wfile.write(sent)
        handler.close_connection = True


@pytest.fixture
def stub():
    server = Stub()
    yield server
    server.server.shutdown()
    server.server.server_close()


def write_catalogue(path, n: int = 4, **columns) -> object:
    """A CSV of n rows at ra 10, 11, ... (the stub's plans key), dec 5, objid 1001, 1002, ..."""
    frame = pd.DataFrame({"objid": [str(1001 + i) for i in range(n)], "ra": [str(10 + i) for i in range(n)],
                          "dec": ["5.0"] * n, **columns})
    frame.to_csv(path, index=False)
    return path


def fetch(catalogue, out, stub, **options):
    """api.cutouts against the stub, fast: no rate limit to speak of, short backoff."""
    options = {"rate": 1000.0, "backoff": 0.01, "timeout": 2.0, "progress": False, **options}
    return api.cutouts(catalogue, out, base_url=stub.base_url, **options)


def test_every_row_is_fetched_once_and_each_failure_is_a_row_with_its_reason(tmp_path, stub):
    catalogue = write_catalogue(tmp_path / "galaxies.csv", 6, error=["a", "", "", "", "", ""])
    frame = pd.read_csv(catalogue, dtype=str, keep_default_na=False)
    frame.loc[3, "objid"] = "../../etc/passwd"
    frame.loc[4, "objid"] = "0001005"  # a leading zero is kept
    frame.loc[5, "ra"] = ""
    frame.to_csv(catalogue, index=False)
    stub.plans = {11: ["404"], 12: ["500"]}

    summary = fetch(catalogue, tmp_path / "cutouts", stub, retries=2)

    out = tmp_path / "cutouts"
    assert (summary.total, summary.fetched, summary.on_disk, summary.failed) == (6, 3, 0, 3)
    assert [stub.hits_for(ra) for ra in range(10, 16)] == [1, 1, 3, 1, 1, 0]  # a 404 is not asked again
    assert summary.requests == 7 and summary.catalogue == out / "catalogue.csv"
    written = pd.read_csv(summary.catalogue, dtype=str, keep_default_na=False)
    assert list(written.columns) == ["objid", "ra", "dec", "input_error", "path", "status", "error", "pixscale"]
    assert written["objid"].tolist() == frame["objid"].tolist()
    assert written["status"].tolist() == ["fetched", "failed", "failed", "fetched", "fetched", "failed"]
    assert written["error"][1] == "HTTP 404 Not Found"
    assert written["error"][2] == "HTTP 500 Internal Server Error (3 attempts)"
    assert written["error"][5] == "ra empty, dec '5.0': not a position in degrees"
    assert written["path"].tolist() == ["1001.jpg", "", "", "_.._etc_passwd.jpg", "0001005.jpg", ""]
    for name in written["path"][written["path"] != ""]:
        assert (out / name).parent == out and jpeg_problem((out / name).read_bytes()) is None
    assert sorted(p.name for p in out.iterdir()) == ["0001005.jpg", "1001.jpg", "_.._etc_passwd.jpg",
                                                     "catalogue.csv", "cutouts.json"]


def test_a_rerun_fetches_nothing_new_and_replaces_a_damaged_file(tmp_path, stub):
    catalogue, out = write_catalogue(tmp_path / "galaxies.csv", 5), tmp_path / "cutouts"
    fetch(catalogue, out, stub)
    assert len(stub.hits) == 5

    again = fetch(catalogue, out, stub)
    assert len(stub.hits) == 5
    assert (again.fetched, again.on_disk, again.failed, again.requests) == (0, 5, 0, 0)

    damaged = out / "1003.jpg"
    damaged.write_bytes(damaged.read_bytes()[:200])  # as a copy cut short would leave it
    third = fetch(catalogue, out, stub)
    assert len(stub.hits) == 6 and stub.hits_for(12) == 2
    assert (third.fetched, third.on_disk) == (1, 4) and jpeg_problem(damaged.read_bytes()) is None


def test_a_rerun_with_a_row_moved_fetches_that_row_again_and_only_it(tmp_path, stub):
    catalogue, out = write_catalogue(tmp_path / "galaxies.csv", 4), tmp_path / "cutouts"
    fetch(catalogue, out, stub)
    frame = pd.read_csv(catalogue, dtype=str)
    frame.loc[2, "ra"] = "20"  # objid 1003, the same file name, now another position
    frame.to_csv(catalogue, index=False)
    again = fetch(catalogue, out, stub)
    assert (again.fetched, again.on_disk) == (1, 3) and stub.hits_for(20) == 1 and len(stub.hits) == 5


def test_the_rate_limit_holds_for_every_pair_of_requests(tmp_path, stub):
    rate, n = 10.0, 12
    summary = fetch(write_catalogue(tmp_path / "galaxies.csv", n), tmp_path / "cutouts", stub, rate=rate,
                    concurrency=4)
    assert summary.fetched == n
    times = sorted(t for t, _, _ in stub.hits)
    for i in range(n):
        for j in range(i + 1, n):
            assert times[j] - times[i] >= (j - i) / rate - 0.05, (i, j)


def test_no_more_requests_at_once_than_the_concurrency(tmp_path, stub):
    stub.plans = {ra: ["slow:0.25"] for ra in range(10, 18)}
    summary = fetch(write_catalogue(tmp_path / "galaxies.csv", 8), tmp_path / "cutouts", stub, concurrency=2)
    assert summary.fetched == 8 and stub.most_in_flight == 2


def test_retries_recover_from_a_transient_500_and_honour_retry_after(tmp_path, stub):
    stub.plans = {10: ["500", "503", "ok"], 11: ["429:1", "ok"]}
    summary = fetch(write_catalogue(tmp_path / "galaxies.csv", 2), tmp_path / "cutouts", stub)
    assert (summary.fetched, summary.failed) == (2, 0)
    assert stub.hits_for(10) == 3 and stub.hits_for(11) == 2
    asked = [t for t, _, query in stub.hits if query["ra"].startswith("11.")]
    assert asked[1] - asked[0] >= 0.95  # Retry-After: 1, though the backoff is 0.01 s


def test_a_truncated_body_is_retried_and_never_kept(tmp_path, stub):
    stub.plans = {10: ["truncated", "ok"], 11: ["truncated"], 12: ["cut"], 13: ["html"]}
    out = tmp_path / "cutouts"
    summary = fetch(write_catalogue(tmp_path / "galaxies.csv", 4), out, stub, retries=1)
    written = pd.read_csv(summary.catalogue, dtype=str, keep_default_na=False)
    assert written["status"].tolist() == ["fetched", "failed", "failed", "failed"]
    assert written["error"][1].startswith("truncated JPEG (") and written["error"][1].endswith("(2 attempts)")
    assert written["error"][2].startswith("connection failed (RemoteProtocolError")
    assert written["error"][3].startswith("not a JPEG (starts b'<html>")
    assert [stub.hits_for(ra) for ra in range(10, 14)] == [2, 2, 2, 2]
    assert sorted(p.name for p in out.iterdir()) == ["1001.jpg", "catalogue.csv", "cutouts.json"]  # no .tmp


def ctrl_c_once_a_file_is_kept(out: Path, stop: threading.Event) -> None:
    """Ctrl-C while requests are in flight: once the first cutout is on disk (not at a fixed time, which a
    loaded machine can reach before any is), while 6 of the 8 are still to come; never once `stop` is set
    (the fetch ended without one: the signal would reach a later test)."""
    while not list(out.glob("*.jpg")):
        if stop.wait(0.005):
            return
    os.kill(os.getpid(), signal.SIGINT)


def test_an_interrupted_run_leaves_only_whole_files_and_the_rerun_fetches_the_rest(tmp_path, stub):
    stub.plans = {ra: ["slow:0.3"] for ra in range(10, 18)}
    catalogue, out = write_catalogue(tmp_path / "galaxies.csv", 8), tmp_path / "cutouts"
    # Python's own Ctrl-C handler: a process started in the background by a non-interactive shell (a CI
    # job, `cmd &`) inherits SIGINT ignored, and the signal below would then pass unseen
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    stop = threading.Event()
    interrupter = threading.Thread(target=ctrl_c_once_a_file_is_kept, args=(out, stop), daemon=True)
    try:
        interrupter.start()
        with pytest.raises(KeyboardInterrupt):
            fetch(catalogue, out, stub, concurrency=2)
    finally:
        stop.set()
        interrupter.join()
        signal.signal(signal.SIGINT, previous)
    kept = sorted(p.name for p in out.glob("*.jpg"))
    assert 0 < len(kept) < 8 and all(jpeg_problem((out / name).read_bytes()) is None for name in kept)
    assert not list(out.glob("*.tmp")) and not (out / "catalogue.csv").exists()
    asked = len(stub.hits)

    stub.plans = {}
    summary = fetch(catalogue, out, stub)
    assert (summary.on_disk, summary.fetched) == (len(kept), 8 - len(kept))
    assert len(stub.hits) - asked == 8 - len(kept)

def test_a_timeout_is_retried_then_reported(tmp_path, stub):
    stub.plans = {10: ["slow:1"]}
    summary = fetch(write_catalogue(tmp_path / "galaxies.csv", 1), tmp_path / "cutouts", stub, timeout=0.2,
                    retries=1)
    assert summary.failed == 1 and stub.hits_for(10) == 2
    assert summary.reasons == {"timed out (no answer within 0.2 s) (2 attempts)": 1}


@pytest.mark.usefixtures("toys")
def test_predict_reads_the_catalogue_beside_the_cutouts(tmp_path, stub):
    stub.plans = {12: ["404"]}
    summary = fetch(write_catalogue(tmp_path / "galaxies.csv", 4), tmp_path / "cutouts", stub, retries=0)

    result = api.predict(make_run(tmp_path), [summary.catalogue], tmp_path / "predictions.parquet",
                         backend="torch", workers=0, progress=False)

    predictions = pd.read_parquet(result.out)
    assert (result.total, result.ok, result.errors) == (4, 3, 1)
    assert predictions["objid"].tolist() == [1001, 1002, 1003, 1004]  # the catalogue's columns carried
    assert predictions["status"].tolist() == ["fetched", "fetched", "failed", "fetched"]
    assert predictions["input_error"][2] == "HTTP 404 Not Found"  # the cutout's error, beside predict's own
    assert "has no path" in predictions["error"][2]
    assert predictions["id"][[0, 1, 3]].tolist() == [1001, 1002, 1004]  # the file names: the ids


def test_a_radius_column_sets_each_pixel_scale(tmp_path, stub):
    catalogue = write_catalogue(tmp_path / "galaxies.csv", 3, petroR90_r=["5.0", "", "-1"])
    summary = fetch(catalogue, tmp_path / "cutouts", stub, size=100, radius_column="petroR90_r",
                    radius_multiple=8.0)
    (_, endpoint, query), = stub.hits
    assert endpoint == "jpeg-cutout"
    assert query == {"ra": "10.0000000", "dec": "5.0000000", "layer": "ls-dr10", "pixscale": "0.4", "size": "100"}
    written = pd.read_csv(summary.catalogue)
    assert written["pixscale"][0] == pytest.approx(0.4) and written["pixscale"][1:].isna().all()
    assert written["error"][1] == "petroR90_r empty: not a radius in arcsec"
    assert written["error"][2] == "petroR90_r '-1': not a radius in arcsec"


def test_legacy_fits_cutouts_are_checked_whole_and_read_as_three_bands(tmp_path, stub):
    stub.plans = {11: ["truncated"]}
    out = tmp_path / "cutouts"
    summary = fetch(write_catalogue(tmp_path / "galaxies.csv", 2), out, stub, format="fits", size=32, retries=1)
    assert (summary.fetched, summary.failed) == (1, 1)
    assert all(query["bands"] == "grz" for _, _, query in stub.hits)
    assert fits_rgb((out / "1001.fits").read_bytes(), "1001.fits")[0].shape == (32, 32, 3)
    assert "truncated FITS" in next(iter(summary.reasons)) and not (out / "1002.fits").exists()


@pytest.mark.parametrize("kind", ["parquet", "ecsv", "fits"])
def test_parquet_and_astropy_catalogues_give_a_parquet_catalogue(tmp_path, stub, kind):
    from astropy.table import Table

    table = Table({"GalaxyID": np.array([587722981741363294, 587722981741363295]), "RA": [10.0, 11.0],
                   "DEC": [5.0, 5.5]})
    path = tmp_path / f"galaxies.{kind}"
    if kind == "parquet":
        table.to_pandas().to_parquet(path)
    else:
        if kind == "fits":
            table["spectrum"] = np.zeros((2, 2))  # a vector column: JSON text in the catalogue written
        table.write(path)

    summary = fetch(path, tmp_path / "cutouts", stub)

    assert summary.catalogue.name == "catalogue.parquet" and summary.fetched == 2
    written = pd.read_parquet(summary.catalogue)
    assert written["GalaxyID"].tolist() == [587722981741363294, 587722981741363295]
    assert written["path"].tolist() == ["587722981741363294.jpg", "587722981741363295.jpg"]
    if kind == "fits":
        assert written["spectrum"].tolist() == ["[0.0, 0.0]"] * 2


def test_a_folder_it_did_not_make_or_other_options_are_refused(tmp_path, stub):
    catalogue, out = write_catalogue(tmp_path / "galaxies.csv", 1), tmp_path / "cutouts"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(ZoomorphError, match="not empty and holds no cutouts.json"):
        fetch(catalogue, tmp_path / "mine", stub)
    fetch(catalogue, out, stub)
    with pytest.raises(ZoomorphError, match="size 424 -> 256"):
        fetch(catalogue, out, stub, size=256)
    with pytest.raises(ZoomorphError, match="is the catalogue this command writes"):
        fetch(out / "catalogue.csv", out, stub)
    pd.DataFrame({"x": [1.0], "y": [2.0]}).to_csv(tmp_path / "no-position.csv", index=False)
    with pytest.raises(ZoomorphError, match="no RA/Dec columns"):
        fetch(tmp_path / "no-position.csv", tmp_path / "other", stub)
    assert len(stub.hits) == 1


def test_without_httpx_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "httpx", None)  # what `import httpx` sees when missing
    with pytest.raises(MissingExtra, match=r"pip install 'zoomorph\[cutouts\]'"):
        api.cutouts(write_catalogue(tmp_path / "galaxies.csv", 1), tmp_path / "cutouts", progress=False)
    assert not (tmp_path / "cutouts").exists()


def test_the_public_services_urls():
    legacy, sdss = SERVICES["legacy"], SERVICES["sdss"]
    assert cutout_url(legacy, "jpeg", 180.5, -1.25, 0.262, 256) == (
        "https://www.legacysurvey.org/viewer/jpeg-cutout?ra=180.5000000&dec=-1.2500000&layer=ls-dr10"
        "&pixscale=0.262&size=256")
    assert cutout_url(legacy, "fits", 180.5, -1.25, 0.262, 256, layer="ls-dr9") == (
        "https://www.legacysurvey.org/viewer/fits-cutout?ra=180.5000000&dec=-1.2500000&layer=ls-dr9"
        "&pixscale=0.262&size=256&bands=grz")
    assert cutout_url(sdss, "jpeg", 180.5, -1.25, 0.396, 424) == (
        "https://skyserver.sdss.org/dr18/SkyServerWS/ImgCutout/getjpeg?ra=180.5000000&dec=-1.2500000"
        "&scale=0.396&width=424&height=424")
    for args, message in [(("sdss", "fits", 256, None), "serves jpeg cutouts, not 'fits'"),
                          (("legacy", "jpeg", 600, None), "1 to 512 pixels"),
                          (("sdss", "jpeg", 256, "ls-dr10"), "has no layers"), (("hst", "jpeg", 256, None), "hst")]:
        with pytest.raises(ZoomorphError, match=message):
            service(*args)


def test_file_names_are_safe_distinct_and_never_paths():
    names = file_names(["1001", "a/b", "A_B", "", "..", "x" * 300, "1001"], ".jpg")
    assert names == ["1001.jpg", "a_b.jpg", "A_B_row3.jpg", "row4.jpg", "row5.jpg", "x" * 100 + ".jpg",
                     "1001_row7.jpg"]


def test_whole_files_only():
    good_jpeg, good_fits = jpeg(1), fits_bytes()
    assert jpeg_problem(good_jpeg) is None and fits_problem(good_fits) is None
    assert "no end marker" in jpeg_problem(good_jpeg[:-2])
    assert "undecodable" in jpeg_problem(good_jpeg[: len(good_jpeg) // 2] + b"\xff\xd9")
    assert "not whole 2880-byte blocks" in fits_problem(good_fits[:-100])
    assert "truncated FITS (File may have been truncated" in fits_problem(good_fits[:-2880])
    assert "not a FITS file" in fits_problem(b"<html>")


def test_retry_after_in_seconds_or_as_a_date():
    assert retry_after("3", 120) == 3 and retry_after("600", 120) == 120
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 120) == 0  # a date past: go on now
    assert retry_after(None, 120) is None and retry_after("soon", 120) is None


def test_the_api_defaults_are_the_modules():
    defaults = {k: p.default for k, p in inspect.signature(api.cutouts).parameters.items()}
    polite = Politeness()
    assert defaults["size"] == download.DEFAULT_SIZE
    assert defaults["radius_multiple"] == download.DEFAULT_RADIUS_MULTIPLE
    for name in ("concurrency", "rate", "retries", "backoff", "timeout", "max_wait"):
        assert defaults[name] == getattr(polite, name), name


def test_the_command_line(tmp_path, stub):
    catalogue = write_catalogue(tmp_path / "galaxies.csv", 2)
    stub.plans = {11: ["404"]}
    runner = CliRunner()
    result = runner.invoke(app, ["cutouts", str(catalogue), "--survey", "sdss", "--out", str(tmp_path / "sdss"),
                                 "--base-url", stub.base_url, "--rate", "1000", "--retries", "0"])
    assert result.exit_code == 0, result.output
    assert "2 rows ->" in result.output and "1 fetched" in result.output and "1 failed" in result.output
    assert "1 failed: HTTP 404 Not Found" in result.output
    assert {(endpoint, query["scale"], query["width"]) for _, endpoint, query in stub.hits} == {("getjpeg", "0.396",
                                                                                                 "424")}
    refused = runner.invoke(app, ["cutouts", str(catalogue), "--out", str(tmp_path / "sdss"),
                                  "--base-url", stub.base_url])
    assert refused.exit_code == 2 and "other options" in refused.output
