"""The ASGI layer in front of the app: what every request meets before any route runs.

* an id (`X-Request-ID` in the answer), and one log line when it ends: id, method, path, status,
  bytes in and out, images, latency;
* admission: at most `queue` classify requests in the server at once; one more is answered 503 with
  Retry-After at once, before its body is read, so memory stays bounded under any load;
* the upload size: refused by its Content-Length before anything is read, or as the body streams
  past the limit (chunked uploads), never after it was all held;
* no traceback to a client: an unexpected error is logged with its traceback and the request id,
  and answered with a JSON 500 that gives only the id.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from zoomorph.serve.limits import Limits, Refused, busy, too_large

log = logging.getLogger("zoomorph.serve")

GUARDED = {("POST", "/v1/classify")}  # the requests that carry images


def error_body(code: str, message: str, request_id: str | None, details: list | None = None) -> bytes:
    return json.dumps({"error": code, "message": message, "request_id": request_id,
                       **({"details": details} if details else {})}).encode()


def _printable(text: str, limit: int = 200) -> str:
    return re.sub(r"[\x00-\x1f\x7f]", "?", text)[:limit]


class Admission:
    """The classify requests in the server now: the Guard counts them, /readyz reports them."""

    in_flight = 0


class Guard:
    def __init__(self, app, limits: Limits, admission: Admission):
        self.app, self.limits, self.admission = app, limits, admission

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id, started = uuid.uuid4().hex[:12], time.perf_counter()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        seen = {"status": None, "in": 0, "out": 0}

        async def sending(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode())]}
            elif message["type"] == "http.response.body":
                seen["out"] += len(message.get("body", b""))
            await send(message)

        async def receiving():
            message = await receive()
            if message["type"] == "http.request":
                seen["in"] += len(message.get("body", b""))
                if seen["in"] > self.limits.max_upload_bytes:
                    raise too_large(self.limits)  # the route's handler answers it
            return message

        admitted = False
        try:
            if (scope["method"], scope["path"]) in GUARDED:
                self._admit(scope)
                admitted = True
                self.admission.in_flight += 1
            await self.app(scope, receiving, sending)
        except Refused as refused:
            if seen["status"] is None:
                await self._answer(sending, refused.status, refused.headers,
                                   error_body(refused.code, refused.message, request_id))
        except Exception:
            log.exception("request %s failed", request_id)
            if seen["status"] is None:
                await self._answer(sending, 500, {}, error_body(
                    "internal_error", f"internal error: the server's log has the details (request {request_id})",
                    request_id))
        finally:
            if admitted:
                self.admission.in_flight -= 1
            log.info("%s %s %s %s in=%dB out=%dB images=%s %.1fms", request_id, scope["method"],
                     _printable(scope["path"]), seen["status"], seen["in"], seen["out"], state.get("images", "-"),
                     1000 * (time.perf_counter() - started))

    def _admit(self, scope) -> None:
        if self.admission.in_flight >= self.limits.queue:
            raise busy(self.limits, f"the server has {self.admission.in_flight} requests in hand "
                       f"(queue={self.limits.queue})")
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limits.max_upload_bytes:
            raise too_large(self.limits)

    @staticmethod
    async def _answer(send, status: int, headers: dict[str, str], body: bytes) -> None:
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *((k.lower().encode(), v.encode()) for k, v in headers.items())]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
