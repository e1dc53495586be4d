"""How `zoomorph serve` holds up under concurrent clients, against offline `predict` with the same backend.

    PYTHONPATH=src python benchmarks/serve_load.py [--run RUN] [--images DIR] [--clients 1,8,64,256]
                                                   [--requests 3000] [--seconds 60] [--offline 4000]

Loopback only (127.0.0.1), bounded in count and time: every level stops after --requests requests or
--seconds seconds, whichever comes first. Steps:
  1. a copy of --run's config and weights in a temporary folder (default: an untrained convnet-lite; the
     weights do not change the speed), exported to ONNX there once;
  2. offline: `predict()` on --offline of the images, in a fresh process: images/s end to end;
  3. the server (`zoomorph serve`, its defaults) in a process of its own; after a warm-up, its memory
     (PSS), then for each number of clients: each client on its own keep-alive connection sends one
     image per request (multipart, as curl does) and sends the next when answered; a 503 is counted as
     refused and the client goes on. Prints requests/s, images/s, latency percentiles of the answered
     requests, refused (503) and their latency, other errors, and the server's peak memory;
  4. the server's memory 15 s after the last level, against its memory before.
Each client is a coroutine with a minimal HTTP/1.1 writer and reader, so that the load generator, which
shares the machine's cores with the server, costs as little as it can.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from predict_throughput import copy_run, make_run, tree_pss

from zoomorph.io.sources import input_sources
from zoomorph.predict.engine import chosen_backend
from zoomorph.predict.onnx import exported
from zoomorph.runs import Run

IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "gz-kaggle-q1" / "images"
BOUNDARY = b"zoomorphbench"


def request_bytes(name: str, data: bytes) -> bytes:
    body = (b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; name=\"files\"; filename=\"" + name.encode()
            + b"\"\r\nContent-Type: image/jpeg\r\n\r\n" + data + b"\r\n--" + BOUNDARY + b"--\r\n")
    head = (b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary="
            + BOUNDARY + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    return head + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, whether the server keeps the connection open)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    await reader.readexactly(int(headers.get("content-length", 0)))
    return status, headers.get("connection") != "close"


async def load(port: int, clients: int, total: int, seconds: float, requests: list[bytes]) -> dict:
    """`clients` connections sending `total` requests in all (at most `seconds`); latencies by outcome."""
    issued, ok, refused, errors = 0, [], [], []
    stop_at = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal issued
        reader = writer = None
        while issued < total and time.perf_counter() < stop_at:
            i, issued = issued, issued + 1
            started = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(requests[(i * 7 + k) % len(requests)])
                await writer.drain()
                status, alive = await read_response(reader)
            except (OSError, asyncio.IncompleteReadError) as err:
                errors.append(type(err).__name__)
                writer = None
                continue
            latency = time.perf_counter() - started
            (ok if status == 200 else refused if status == 503 else errors).append(
                latency if status in (200, 503) else status)
            if not alive:
                writer.close()
                writer = None
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return {"wall": time.perf_counter() - started, "ok": ok, "refused": refused, "errors": errors}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                if sock.recv(100).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit("the server did not become ready")


def offline(run: Path, sources: list[str], backend: str, root: Path) -> float:
    """predict()'s images/s on `sources` (a catalogue of them), in a fresh process, as
    benchmarks/predict_throughput.py measures it."""
    catalogue = root / "offline.csv"
    pd.DataFrame({"path": sources}).to_csv(catalogue, index=False)
    code = ("import sys; from zoomorph.predict import predict; "
            "print(predict(sys.argv[1], [sys.argv[2]], sys.argv[3], backend=sys.argv[4], progress=False).images_per_s)")
    done = subprocess.run([sys.executable, "-c", code, str(run), str(catalogue), str(root / "offline.parquet"),
                           backend], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    p = np.percentile(np.asarray(values) * 1000, [50, 95, 99])
    return "/".join(f"{v:,.0f}" for v in p)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="a trained run folder (default: untrained convnet-lite)")
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument("--clients", default="1,8,64,256")
    parser.add_argument("--requests", type=int, default=3000, help="requests per level (at most)")
    parser.add_argument("--seconds", type=float, default=60, help="seconds per level (at most)")
    parser.add_argument("--offline", type=int, default=4000, help="images for the offline predict() figure")
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    if not args.images.exists():
        raise SystemExit(f"{args.images} not found: give --images, a folder of galaxy JPEGs")
    files = [s for s in input_sources(str(args.images)) if isinstance(s, str)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = copy_run(args.run, root) if args.run else make_run(root, "convnet-lite")
        backend = chosen_backend(args.backend, "local", 0)
        if backend != "torch":
            exported(Run.open(run), int8=backend == "onnx-int8")  # once, before either side is timed
        offline_rate = offline(run, (files * (args.offline // len(files) + 1))[:args.offline], backend, root)
        requests = [request_bytes(Path(f).name, Path(f).read_bytes()) for f in files[:500]]
        port = free_port()
        zoomorph = shutil.which("zoomorph", path=str(Path(sys.executable).parent)) or "zoomorph"
        server = subprocess.Popen([zoomorph, "serve", str(run), "--port", str(port), "--backend", backend,
                                   "--log-level", "warning"], stdout=subprocess.DEVNULL)
        try:
            wait_ready(port, server)
            asyncio.run(load(port, 4, 200, 30, requests))  # warm-up: sessions, thread pools, allocator
            before = tree_pss(server.pid)
            print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; "
                  f"backend {backend}; offline predict(): {offline_rate:,.0f} images/s on {args.offline:,} images")
            print(f"server memory after warm-up: {before / 2**20:,.0f} MB")
            print(f"{'clients':>7} {'requests':>8} {'req/s':>7} {'img/s':>7} {'vs offline':>10} "
                  f"{'p50/p95/p99 ms':>16} {'503s':>6} {'503 p50/p95/p99 ms':>19} {'errors':>6} {'peak MB':>8}")
            for clients in map(int, args.clients.split(",")):
                peak = [0]

                async def sampled(clients=clients, peak=peak):
                    task = asyncio.ensure_future(load(port, clients, args.requests, args.seconds, requests))
                    while not task.done():
                        peak[0] = max(peak[0], tree_pss(server.pid))
                        await asyncio.sleep(0.5)
                    return task.result()

                r = asyncio.run(sampled())
                n = len(r["ok"]) + len(r["refused"]) + len(r["errors"])
                rate = len(r["ok"]) / r["wall"]
                print(f"{clients:>7} {n:>8} {n / r['wall']:>7,.0f} {rate:>7,.0f} {rate / offline_rate:>9.0%} "
                      f"{percentiles(r['ok']):>16} {len(r['refused']):>6} {percentiles(r['refused']):>19} "
                      f"{len(r['errors']):>6} {peak[0] / 2**20:>8,.0f}", flush=True)
                time.sleep(2)
            time.sleep(15)  # the server hands freed memory back after 5-10 s of quiet
            after = tree_pss(server.pid)
            print(f"server memory 15 s after the last level: {after / 2**20:,.0f} MB "
                  f"({after / before - 1:+.1%} against after warm-up)")
        finally:
            server.terminate()
            server.wait(20)


if __name__ == "__main__":
    main()
