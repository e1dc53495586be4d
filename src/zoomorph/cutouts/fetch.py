"""The polite client: few connections, a request rate, retries that back off, files kept only when whole.

* At most `concurrency` requests at once (the worker threads and the connection pool).
* At most `rate` request starts per second, all threads and retries together (RateLimiter).
* Retries, each after an exponential backoff (`backoff` s, doubled each time, with jitter) on 5xx, 408,
  425, 429, timeouts, connection errors and incomplete or undecodable bodies; never on 404 or another
  4xx, which asking again would not change. A Retry-After (seconds or a date) pauses every thread, not
  only the one it answered, as the server asked, capped at `max_wait`.
* A cutout is written to a temporary file and renamed only once its bytes are checked whole
  (zoomorph.cutouts.valid), so a kill never leaves a half file that looks like a cutout.
Threads rather than asyncio: the API is called from notebooks, which already run an event loop.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Callable

from zoomorph import __version__
from zoomorph.errors import MissingExtra, ZoomorphError
from zoomorph.files import replace_atomically

USER_AGENT = f"zoomorph/{__version__} (galaxy cutouts)"  # says who asks, as the services like
RETRY_STATUSES = {408, 425, 429}  # and every 5xx


@dataclass(frozen=True)
class Politeness:
    concurrency: int = 4  # requests in flight at once
    rate: float = 5.0  # request starts per second, retries included
    retries: int = 4  # attempts after the first
    backoff: float = 1.0  # seconds before the first retry, doubled for each one after
    timeout: float = 30.0  # seconds to connect, and between bytes of an answer
    max_wait: float = 120.0  # the longest pause, a server's Retry-After included

    def check(self) -> None:
        if self.concurrency < 1 or self.rate <= 0 or self.retries < 0 or self.backoff < 0 or self.timeout <= 0:
            raise ZoomorphError(f"cutouts need concurrency >= 1, rate > 0, retries >= 0, backoff >= 0 and "
                                f"timeout > 0 (given {self})")


@dataclass(frozen=True)
class Fetched:
    error: str | None  # None: the cutout is on disk, whole
    attempts: int  # requests made


class Stopped(Exception):
    """The run was interrupted (Ctrl-C): no more requests."""


class RateLimiter:
    """Request starts at most `rate` per second across threads: each one takes the next free slot."""

    def __init__(self, rate: float, stop: threading.Event):
        self.interval, self.stop = 1.0 / rate, stop
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        self.sleep(slot - now)

    def hold(self, seconds: float) -> None:
        """No request starts for `seconds` (a server's Retry-After)."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)

    def sleep(self, seconds: float) -> None:
        if self.stop.wait(max(seconds, 0.0)):
            raise Stopped


def require_httpx():
    """The httpx module, or MissingExtra naming the extra that brings it."""
    try:
        import httpx  # optional: only `zoomorph cutouts` needs it
    except ImportError as err:
        raise MissingExtra("zoomorph cutouts needs httpx: pip install 'zoomorph[cutouts]'") from err
    return httpx


def open_client(polite: Politeness):
    """An HTTP client with one pooled connection per worker thread (httpx.Client is thread-safe)."""
    httpx = require_httpx()
    return httpx.Client(timeout=polite.timeout, follow_redirects=True, headers={"User-Agent": USER_AGENT},
                        limits=httpx.Limits(max_connections=polite.concurrency,
                                            max_keepalive_connections=polite.concurrency))


def retry_after(value: str | None, limit: float) -> float | None:
    """A Retry-After header in seconds (it is a number of seconds or an HTTP date), at most `limit`."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), limit)


def fetch(client, url: str, target: Path, problem: Callable[[bytes], str | None], polite: Politeness,
          limiter: RateLimiter) -> Fetched:
    """Fetch `url` into `target`, retrying as the module says; the error of the last attempt if none worked."""
    httpx = require_httpx()
    error = "no attempt"
    for attempt in range(polite.retries + 1):
        if attempt:
            limiter.sleep(min(polite.backoff * 2 ** (attempt - 1), polite.max_wait) * random.uniform(0.75, 1.25))
        limiter.wait()
        try:
            response = client.get(url)
        except httpx.TimeoutException:
            error = f"timed out (no answer within {polite.timeout:g} s)"
            continue
        except httpx.TransportError as err:  # refused, reset, or a body cut short of its Content-Length
            error = f"connection failed ({type(err).__name__}: {err})"
            continue
        except httpx.RequestError as err:  # a body that does not decode, too many redirects
            error = f"request failed ({type(err).__name__}: {err})"
            continue
        if response.is_success:
            error = problem(response.content)
            if error is None:
                try:
                    save(target, response.content)
                except OSError as err:  # a full disk, a folder gone: this row's error, not a traceback
                    return Fetched(f"cannot write {target.name} ({err})", attempt + 1)
                return Fetched(None, attempt + 1)
            continue
        error = f"HTTP {response.status_code} {response.reason_phrase}".strip()
        if response.status_code not in RETRY_STATUSES and response.status_code < 500:
            return Fetched(error, attempt + 1)
        pause = retry_after(response.headers.get("Retry-After"), polite.max_wait)
        if pause:
            limiter.hold(pause)
    attempts = polite.retries + 1
    return Fetched(f"{error} ({attempts} attempt{'s' if attempts > 1 else ''})", attempts)


def save(target: Path, body: bytes) -> None:
    """`body` as `target`, whole or not at all: written beside it, then renamed."""
    replace_atomically(target, lambda tmp: tmp.write_bytes(body))
