"""The FastAPI application of `zoomorph serve`: routes, request parsing, error answers (docs/serving.md).

    POST /v1/classify   images (multipart `files`, or JSON with base64) -> one answer per image
    GET  /v1/model      what is served: model, classes, input, training data, validation, limits
    GET  /healthz       the process answers; GET /readyz: and takes requests (503 when its queue is full)
    GET  /              the page (static/index.html: no build step, no external URL)

Decoding runs in a thread pool and the model in a thread of its own (batching.py), so the event
loop only parses requests and writes answers. Every refusal is a JSON ErrorResponse.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import ctypes
import gc
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Callable

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from zoomorph.errors import ZoomorphError
from zoomorph.serve.batching import Batcher
from zoomorph.serve.guard import Admission, Guard, error_body
from zoomorph.serve.limits import BadImage, Limits, Refused, busy, clean_name
from zoomorph.serve.model import Options, ServedModel
from zoomorph.serve.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    ErrorResponse,
    Health,
    ImageResult,
    LimitsInfo,
    ModelInfo,
    Ready,
    TrainingData,
)

FORM_FIELDS = ("files", "tta", "mc_samples", "saliency")
TRUE, FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off", ""}
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; img-src 'self' data: blob:; "
                "style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'",
                "X-Content-Type-Options": "nosniff"}
ERRORS = {status: {"model": ErrorResponse, "description": why} for status, why in (
    (400, "a malformed multipart body"), (408, "the body did not arrive within timeout_s"),
    (413, "the body or the image count over its limit"), (415, "neither multipart/form-data nor JSON"),
    (422, "bad fields or options, or no image could be read (details: why, per image)"),
    (503, "the queue is full or no answer within timeout_s: retry after Retry-After seconds"))}


class Upload:
    """One image as received: its name as echoed back, its bytes (or why there are none)."""

    def __init__(self, name: str, data: bytes = b"", problem: str = ""):
        self.name, self.data, self.problem = name, data, problem


def create_app(model: ServedModel, limits: Limits | None = None, batch_size: int = 64,
               max_wait_ms: float = 5.0) -> FastAPI:
    """The app serving `model` within `limits` (default: Limits()); `batch_size` images at most per model
    call, gathered for at most `max_wait_ms` while other requests are being decoded."""
    limits = limits or Limits()
    if batch_size < 1 or max_wait_ms < 0:
        raise ZoomorphError(f"batch_size={batch_size}, max_wait_ms={max_wait_ms}: give 1 or more, and 0 or "
                            "more")
    batcher = Batcher(model.samples, batch_size, max_wait_ms / 1000)
    model.warm_up(max(batch_size, limits.max_images))
    decoders = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="zoomorph-decode")
    info = model_info(model, limits, batch_size, max_wait_ms)

    @asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        trimmer = asyncio.get_running_loop().create_task(trim_when_quiet(batcher, model.release_memory))
        yield
        trimmer.cancel()
        await batcher.stop()
        decoders.shutdown(wait=False)

    app = FastAPI(title="zoomorph", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,  # CDN scripts
                  description=f"Galaxy morphology with {model.cfg.model} ({model.run.name}): docs/serving.md")
    admission = Admission()

    def refusal(request: Request, status: int, code: str, message: str, headers=None, details=None) -> Response:
        return Response(error_body(code, message, request.state.request_id, details), status,
                        headers=headers, media_type="application/json")

    @app.exception_handler(Refused)
    async def refused(request: Request, err: Refused) -> Response:
        return refusal(request, err.status, err.code, err.message, err.headers, err.details)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "bad_request")
        return refusal(request, err.status_code, code, str(err.detail), getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> Response:
        return refusal(request, 422, "bad_request", describe(err.errors()))

    @app.post("/v1/classify", response_model=ClassifyResponse, responses=ERRORS,
              openapi_extra={"requestBody": request_body()})
    async def classify(request: Request) -> Response:
        """Classify one or many images: multipart `files` (and form fields tta, mc_samples, saliency), or a
        JSON ClassifyRequest with base64 images. An unreadable image gets its own error entry."""
        try:
            uploads, options, saliency = await asyncio.wait_for(read(request, limits), limits.timeout_s)
        except asyncio.TimeoutError:
            raise Refused(408, "timeout", f"the request body did not arrive within {limits.timeout_s:g} s "
                                          "(timeout_s)") from None
        request.state.images = len(uploads)
        try:
            model.check(options, limits)
        except ZoomorphError as err:
            raise Refused(422, "bad_request", str(err)) from None
        if saliency and len(uploads) > limits.max_saliency:
            raise Refused(422, "bad_request", f"saliency for {len(uploads)} images: at most {limits.max_saliency} "
                                              "per request (max_saliency)")
        try:
            results = await asyncio.wait_for(answer(uploads, options, saliency), limits.timeout_s)
        except asyncio.TimeoutError:
            raise busy(limits, f"no answer within {limits.timeout_s:g} s (timeout_s)") from None
        response = ClassifyResponse(request_id=request.state.request_id, model=model.cfg.model, backend=model.backend,
                                    tta=options.tta, mc_samples=options.mc_samples, results=results)
        # Serialised here, once: returned as a model, FastAPI would validate it again against response_model
        # (which stays, for the schema), a cost paid per request on the event loop.
        return Response(response.model_dump_json(), media_type="application/json")

    async def answer(uploads: list[Upload], options: Options, saliency: bool) -> list[ImageResult]:
        loop = asyncio.get_running_loop()
        batcher.expect(len(uploads))
        try:
            decoded, pixels = await loop.run_in_executor(decoders, decode_all, model, uploads, limits)
        finally:
            batcher.expect(-len(uploads))
        ok = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
        if pixels is None:
            raise Refused(422, "no_readable_image", f"no image of the {len(uploads)} sent could be read: "
                          + "; ".join(f"{u.name}: {d}" for u, d in zip(uploads, decoded)),
                          details=[{"name": u.name, "error": d} for u, d in zip(uploads, decoded)])
        answers = model.answers(await batcher.submit(pixels, options))
        overlays = [None] * len(ok)
        if saliency:
            overlays = await batcher.call(lambda: [model.overlay(p, model.target(a)) for p, a in zip(pixels, answers)])
        results = [ImageResult(name=u.name, error=d) if isinstance(d, str) else None for u, d in zip(uploads, decoded)]
        key = "probabilities" if model.cfg.head == "classes" else "fractions"
        for i, a, overlay in zip(ok, answers, overlays):
            results[i] = ImageResult(name=uploads[i].name, predicted=a["predicted"], **{key: a["values"]},
                                     entropy=a["entropy"], std=a.get("std"), mutual_info=a.get("mutual_info"),
                                     note=decoded[i].note or None, saliency=overlay)
        return results

    @app.get("/v1/model", response_model=ModelInfo)
    async def model_endpoint() -> ModelInfo:
        """What is served: the model, its classes and input, its training data and validation metrics."""
        return info

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        """The process is up and answering."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Ready, responses={503: {"model": Ready, "description": "queue full"}})
    async def readyz() -> Response:
        """The model is loaded and the queue has room (503 when it is full)."""
        full = admission.in_flight >= limits.queue
        ready = Ready(status="busy" if full else "ready", in_flight=admission.in_flight, queue=limits.queue,
                      batches=batcher.batches, images=batcher.images)
        return JSONResponse(ready.model_dump(), 503 if full else 200)

    page = files("zoomorph.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            body = ClassifyRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(body.pop("$defs", {}))
            components["ClassifyRequest"] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    app.add_middleware(Guard, limits=limits, admission=admission)  # inside Starlette's error middleware
    app.state.batcher, app.state.admission = batcher, admission
    return app


def request_body() -> dict:
    """The two forms POST /v1/classify takes, for the OpenAPI schema."""
    flag = {"type": "boolean", "default": False}
    form = {"type": "object", "required": ["files"], "additionalProperties": False, "properties": {
        "files": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}},
        "tta": flag, "mc_samples": {"type": "integer", "minimum": 0, "default": 0}, "saliency": flag}}
    return {"required": True, "content": {
        "multipart/form-data": {"schema": form},
        "application/json": {"schema": {"$ref": "#/components/schemas/ClassifyRequest"}}}}


async def read(request: Request, limits: Limits) -> tuple[list[Upload], Options, bool]:
    """The uploads and options of a classify request, multipart or JSON; Refused saying what is wrong."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        uploads, fields = await read_form(request, limits)
    elif kind == "application/json":
        uploads, fields = await read_json(request, limits)
    else:
        raise Refused(415, "unsupported_media_type", f"content type {clean_name(kind, 0)!r}: send multipart/form-data "
                      "(image files in fields named 'files') or application/json (a ClassifyRequest)")
    if len(uploads) > limits.max_images:
        raise Refused(413, "too_many_images", f"{len(uploads)} images: at most {limits.max_images} per request "
                      "(max_images)")
    return uploads, Options(tta=fields["tta"], mc_samples=fields["mc_samples"]), fields["saliency"]


async def read_form(request: Request, limits: Limits) -> tuple[list[Upload], dict]:
    try:
        form = await request.form(max_files=limits.max_images, max_fields=len(FORM_FIELDS), max_part_size=1024)
    except HTTPException as err:  # python-multipart's complaint, as Starlette words it
        detail = str(err.detail)
        if detail.startswith("Too many files"):
            raise Refused(413, "too_many_images", f"more than {limits.max_images} images: at most "
                          f"{limits.max_images} per request (max_images)") from None
        raise Refused(400, "bad_multipart", f"malformed multipart body: {detail}") from None
    unknown = sorted({clean_name(k, 0) for k in form.keys()} - set(FORM_FIELDS))
    if unknown:
        raise Refused(422, "bad_request", f"unknown field(s) {', '.join(map(repr, unknown))}: the fields are "
                                          f"{', '.join(FORM_FIELDS)} (images go in 'files')")
    parts = form.getlist("files")
    if not parts:
        raise Refused(422, "bad_request", "no images: send them as multipart file fields named 'files'")
    uploads = []
    for i, part in enumerate(parts):
        if not isinstance(part, UploadFile):
            raise Refused(422, "bad_request", "'files' must be file parts (with a filename), not text fields")
        uploads.append(Upload(clean_name(part.filename, i), await part.read()))
    fields = {"tta": flag(form.get("tta"), "tta"), "saliency": flag(form.get("saliency"), "saliency"),
              "mc_samples": integer(form.get("mc_samples"), "mc_samples")}
    await form.close()
    return uploads, fields


async def read_json(request: Request, limits: Limits) -> tuple[list[Upload], dict]:
    body = await request.body()
    try:
        parsed = ClassifyRequest.model_validate_json(body)
    except ValidationError as err:
        raise Refused(422, "bad_request", describe(err.errors(include_url=False))) from None
    uploads = [Upload(clean_name(image.name, i), *b64(image.data)) for i, image in enumerate(parsed.images)]
    return uploads, {"tta": parsed.tta, "mc_samples": parsed.mc_samples, "saliency": parsed.saliency}


def b64(text: str) -> tuple[bytes, str]:
    """(bytes, "") from base64 text, a data: URL's too; (b"", why) when it is not base64."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True), ""
    except (binascii.Error, ValueError) as err:
        return b"", f"data is not valid base64 ({err})"


def decode_all(model: ServedModel, uploads: list[Upload], limits: Limits) -> tuple[list, np.ndarray | None]:
    """In a decoding thread: each upload's Decoded, or why it cannot be used; and the pixels of those
    decoded, stacked (None when none was), so that the event loop does not copy them."""
    out = []
    for upload in uploads:
        try:
            if upload.problem:
                raise BadImage(upload.problem)
            out.append(model.decode(upload.data, upload.name, limits))
        except BadImage as err:
            out.append(str(err))
    pixels = [d.pixels for d in out if not isinstance(d, str)]
    return out, np.stack(pixels) if pixels else None


def flag(value, name: str) -> bool:
    text = "" if value is None else str(value).strip().lower()
    if text in TRUE or text in FALSE:
        return text in TRUE
    raise Refused(422, "bad_request", f"{name}={clean_name(str(value), 0)!r}: give true or false")


def integer(value, name: str) -> int:
    text = "0" if value is None else str(value).strip()
    if text.isdigit():
        return int(text)
    raise Refused(422, "bad_request", f"{name}={clean_name(text, 0)!r}: give a whole number, 0 or more")


def describe(errors: list[dict]) -> str:
    """pydantic's errors in one line: `images.0.data: Field required; ...` (invalid JSON said as such)."""
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{where}: {e['msg']}" if where else e["msg"])
    return "bad request body: " + "; ".join(clean_name(p, 0) for p in parts)


def model_info(model: ServedModel, limits: Limits, batch_size: int, max_wait_ms: float) -> ModelInfo:
    cfg, summary = model.cfg, model.run.summary()
    metrics = model.run.metrics()
    if metrics:
        variant = metrics.get("variants", {}).get("plain", {})
        validation = {k: float(v) for k, v in variant.items() if isinstance(v, (int, float)) and k != "n"}
        validation["n"] = float(metrics.get("n", 0))
    else:
        validation = {"accuracy": float(summary["best_val_acc"])} if "best_val_acc" in summary else {}
    extra = cfg.extra or {}
    training = TrainingData(data=Path(cfg.data).name if cfg.data else None, preset=cfg.preset,
                            split_hash=cfg.split_hash, n_train=extra.get("n_train"), n_val=extra.get("n_val"),
                            train_class_counts=summary.get("train_class_counts"),
                            val_class_counts=summary.get("val_class_counts"), epochs=summary.get("epochs"),
                            best_epoch=summary.get("best_epoch"))
    return ModelInfo(run=model.run.name, model=cfg.model, head=cfg.head, classes=model.values,
                     preset=model.preset.name if model.preset else None, image_size=cfg.image_size, fov=str(cfg.fov),
                     backend=model.backend, batch_size=batch_size, max_wait_ms=max_wait_ms,
                     mc_dropout=model.mc_forward is not None, weights_sha256=model.run.weights_digest,
                     training=training, validation=validation, limits=LimitsInfo(**limits.as_dict()))


def _glibc(function: str):
    try:
        return getattr(ctypes.CDLL("libc.so.6"), function)
    except (OSError, AttributeError):  # not glibc
        return None


def _malloc_trim():
    return _glibc("malloc_trim")


M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_arenas(arenas: int = 2) -> None:
    """At most `arenas` glibc malloc arenas for the threads this process starts from now on (as
    MALLOC_ARENA_MAX=2 would): by default each thread that allocates may get its own, up to 8 per core,
    and memory freed in one is kept there, so a load spread over many threads leaves the process larger."""
    mallopt = _glibc("mallopt")
    if mallopt is not None:
        mallopt(M_ARENA_MAX, arenas)


async def trim_when_quiet(batcher: Batcher, release: Callable[[], None], every_s: float = 5.0) -> None:
    """Once a busy spell ends (no image classified for `every_s`), hand freed memory back to the system:
    `release` (onnxruntime's arena, in the model's thread; +10.5% after a load test without it), then the
    spell's reference cycles, then glibc's arenas (+13% without that)."""
    trim, last, trimmed = _malloc_trim(), batcher.images, True
    while True:
        await asyncio.sleep(every_s)
        if batcher.images != last:  # busy in this spell
            last, trimmed = batcher.images, False
        elif not trimmed:  # quiet after a busy one
            await batcher.call(release)
            gc.collect()
            if trim is not None:
                trim(0)
            trimmed = True


def run_server(app: FastAPI, host: str, port: int, log_level: str = "info") -> None:
    """Serve `app` with uvicorn until interrupted; one log line per request (guard.py), no access log."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["zoomorph.serve"] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, log_config=config,
                timeout_graceful_shutdown=10)
