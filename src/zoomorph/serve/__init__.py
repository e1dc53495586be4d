"""`zoomorph serve RUN`: a web page and an HTTP API over one trained run (docs/serving.md).

    limits.py    every limit a request meets, each configurable; what an upload's bytes are (sniffed)
    model.py     the run's model, loaded once: images -> answers, Grad-CAM overlays
    batching.py  concurrent requests gathered into model batches (dynamic batching)
    guard.py     the ASGI layer in front: request ids, logs, admission (503), upload size, no tracebacks
    schemas.py   the pydantic models of every answer and of the JSON request
    app.py       the FastAPI application: routes, request parsing, error answers
    static/      the page served at /

FastAPI and uvicorn are an optional extra (`pip install 'zoomorph[serve]'`): this module imports
neither, so `zoomorph` works without them and `require_extra` says how to get them.
"""

from __future__ import annotations

import importlib.util

from zoomorph.errors import MissingExtra

# import name -> the distribution that provides it
EXTRA_MODULES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "multipart": "python-multipart"}


def require_extra() -> None:
    """MissingExtra naming the serve extra when FastAPI, uvicorn or python-multipart is missing."""
    missing = [dist for module, dist in EXTRA_MODULES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise MissingExtra(f"zoomorph serve needs {', '.join(missing)}: pip install 'zoomorph[serve]'")
