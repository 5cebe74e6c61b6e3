"""The web app: a static page and a JSON API under ``/v1/`` over the runs named at start.

Safe by default: only the runs given to :func:`create_app` are served, looked up by name (no path
ever comes from a request); every body is read by the middleware below up to a limit before the app
sees it (413 past it); the type of an upload is read from its bytes (415 for anything else); bad
values get a 422 with one line that says what to change; and every model computation runs on one
worker thread, one request at a time, behind a bounded number of waiting requests (503 past it), so
many users cannot exhaust memory. The OpenAPI document is at ``/openapi.json`` (``/docs`` shows it as a page).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import CvaeError
from .docs import api_page
from .served import Limits, ServedRun, UploadError, run_names

log = logging.getLogger("cvae.serve")

JSON_BODY_LIMIT = 64 * 1024  # a JSON request is a few numbers and names
UPLOAD_OPS = ("reconstruct", "transfer", "score", "encode", "classify")
JSON_OPS = ("generate", "decode", "traverse")
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}
# The page loads nothing from anywhere else: the browser is told so, and refuses if it ever tried.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                 b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]

# strict numbers: JSON's true and false are not the classes 1 and 0
Condition = dict[str, StrictStr | StrictInt | StrictFloat] | StrictStr | None
Upload = Annotated[UploadFile, File(description="a PNG/JPEG image, a CSV file (one example a row) or .npy/.npz")]
OwnCondition = Annotated[str, Form(description="the inputs' own condition when the file has none, e.g. label=3")]
Targets = Annotated[str, Form(description="targets separated by ';', e.g. label=3;label=5 (default: every class of "
                              "the first categorical condition)")]
Attribute = Annotated[str, Form(description="the categorical condition to classify (default: the first)")]
CONDITION_HELP = "the condition, e.g. {\"label\": \"7\"} or \"label=7\"; left out, a categorical one cycles"


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    condition: Condition = Field(None, description=CONDITION_HELP)
    n: StrictInt = Field(16, ge=1, le=256, description="how many examples (at most the server's max_n, default 64)")
    seed: StrictInt = Field(0, ge=0, lt=2**63, description="the same seed gives the same examples, byte for byte")
    temperature: StrictFloat | None = Field(None, ge=0.0, le=10.0, allow_inf_nan=False,
                                            description="scale of the standard deviations of the codes' distribution "
                                                        "(1 samples it exactly; default as cvae sample: 0.9 for the "
                                                        "prior, 1 for a run's fitted aggregate posterior)")
    draw: StrictBool = Field(False, description="draw x ~ p(x | z, c) instead of its mean")
    guidance: StrictFloat | None = Field(None, ge=0.0, le=20.0, allow_inf_nan=False,
                                         description="classifier-free guidance weight (runs trained with "
                                                     "--condition-dropout; default: the run's)")
    steer: StrictFloat | None = Field(None, ge=0.0, le=20.0, allow_inf_nan=False,
                                      description="sequence runs trained with --steer: the prefix predictor's "
                                                  "steering weight (default: the run's)")
    format: Literal["json", "png"] = Field("json", description="png: the image grid itself (image runs)")


class DecodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    condition: Condition = Field(None, description=CONDITION_HELP)
    values: dict[int, Annotated[StrictFloat, Field(ge=-10.0, le=10.0, allow_inf_nan=False)]] = Field(
        default_factory=dict, description="latent dimension -> prior standard deviations from the prior's centre")


class TraverseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    condition: Condition = Field(None, description=CONDITION_HELP)
    dims: list[StrictInt] | None = Field(None, min_length=1, max_length=16,
                                         description="dimensions (default: the top ones by KL)")
    top: StrictInt = Field(5, ge=1, le=16)
    steps: StrictInt = Field(9, ge=2, le=15)
    low: StrictFloat = Field(-3.0, ge=-10.0, le=10.0, allow_inf_nan=False)
    high: StrictFloat = Field(3.0, ge=-10.0, le=10.0, allow_inf_nan=False)


BODY_IDLE_TIMEOUT = 15.0  # seconds a request may send nothing of its body before it is answered 408
BODY_TIMEOUT = 120.0  # seconds for the whole body (5 MB at 50 KB/s)


def _static(name: str) -> bytes:
    return (resources.files("cvae.serve") / "static" / name).read_bytes()


class Guard:
    """ASGI middleware: admission (at most ``max_waiting`` JSON and ``max_uploads`` upload requests in
    the server at once, 503 past it), the content type of each POST (415) and the size of its body,
    read here in full up to its limit (413 past it) before the app sees any of it."""

    def __init__(self, app, *, upload_limit: int, max_waiting: int, max_uploads: int,
                 idle_timeout: float = BODY_IDLE_TIMEOUT, body_timeout: float = BODY_TIMEOUT):
        self.app = app
        self.idle_timeout, self.body_timeout = idle_timeout, body_timeout
        self.upload_limit = upload_limit
        self.capacity = {"json": max_waiting, "upload": max_uploads}
        self.inside = {"json": 0, "upload": 0}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self._with_headers(scope, receive, send)
        method, path = scope["method"], scope["path"]
        if method not in ("GET", "HEAD", "POST"):
            return await _answer(send, 405, f"method {method} is not allowed here; use GET or POST")
        if method != "POST":
            return await self._with_headers(scope, receive, send)
        op = path.rstrip("/").rsplit("/", 1)[-1]
        kind = "upload" if op in UPLOAD_OPS else "json"
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        wanted = "multipart/form-data" if kind == "upload" else "application/json"
        if op in UPLOAD_OPS + JSON_OPS and ctype != wanted:
            return await _answer(send, 415, f"POST {path} takes {wanted}" + (
                " with the file in the field 'file'" if kind == "upload" else " (a JSON object)")
                + f", not {ctype or 'a body without a content type'}")
        limit = self.upload_limit + 64 * 1024 if kind == "upload" else JSON_BODY_LIMIT  # + multipart's headers
        what = f"{self.upload_limit / 2**20:.3g} MB for an upload" if kind == "upload" else f"{JSON_BODY_LIMIT // 1024} KB for a JSON request"
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await _answer(send, 413, f"the request body is {declared} bytes; the limit is {what}")
        if self.inside[kind] >= self.capacity[kind]:
            return await _answer(send, 503, f"the server is busy ({self.inside[kind]} requests waiting); retry shortly",
                                 [(b"retry-after", b"1")])
        self.inside[kind] += 1
        try:
            chunks, size = [], 0
            deadline = asyncio.get_running_loop().time() + self.body_timeout
            while True:
                # a client that holds its place without sending its body is cut off: sixteen of them held
                # every upload place, and every other user got 503 for as long as they stayed connected
                wait = min(self.idle_timeout, deadline - asyncio.get_running_loop().time())
                try:
                    message = await asyncio.wait_for(receive(), timeout=max(wait, 0.0))
                except asyncio.TimeoutError:
                    return await _answer(send, 408, f"the request body did not arrive in time (nothing for "
                                         f"{self.idle_timeout:g} s, or not all of it within {self.body_timeout:g} s); "
                                         "send it again", [(b"connection", b"close")])
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    return await _answer(send, 413, f"the request body is over the limit of {what}")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            sent = False

            async def replay():
                nonlocal sent
                if sent:
                    return {"type": "http.disconnect"}
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self._with_headers(scope, replay, send)
        finally:
            self.inside[kind] -= 1

    async def _with_headers(self, scope, receive, send):
        async def send_secured(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_secured)


async def _answer(send, status: int, detail: str, extra: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(extra or []), *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})


def as_field_names(message: str) -> str:
    """The apps' messages name command-line flags (--condition, --n); here they are request fields, and
    what the flags --input and --data name is the uploaded file."""
    message = re.sub(r"(?<![\w-])--(input|data)(?![\w-])(,? the string| the upload)?", "the upload", message)
    return re.sub(r"(?<![\w-])--([a-z][a-z-]*)", lambda m: "'" + m.group(1).replace("-", "_") + "'", message)


def _as_sent(out: dict, file: UploadFile) -> dict:
    """An uploaded image's id is the name the client sent, not the server's temporary one (upload.png)."""
    name = Path(file.filename or "").name[:200]
    if name and isinstance(out.get("ids"), list):
        out["ids"] = [name if i in ("upload.png", "upload.jpg") else i for i in out["ids"]]
    return out


def _one_line(errors) -> str:
    """Pydantic's validation errors as one line: 'n: Input should be less than or equal to 256; ...'."""
    parts = []
    for e in errors:
        if e.get("type") == "json_invalid":
            return f"the request body is not valid JSON ({e.get('ctx', {}).get('error', 'cannot parse it')})"
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path")]
        if "Expected UploadFile" in str(e.get("msg", "")):
            parts.append(f"{'.'.join(loc) or 'file'}: send a file (curl -F {'.'.join(loc) or 'file'}=@PATH), not text")
            continue
        if loc and loc[0] == "condition":  # the union's every branch would be listed in pydantic's words
            name = next((p for p in loc[1:] if not p.startswith(("dict[", "str", "int", "float"))), None)
            return (f"condition{' ' + repr(name) if name else ''}: give an object of condition names and values, "
                    "each a string or a number, e.g. {\"label\": \"7\"}, or a string such as \"label=7\"")
        parts.append(f"{'.'.join(loc) or 'the request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts[:5]) or "the request is not valid"


def create_app(runs: list[str | Path] | Mapping[str, str | Path], *, device: str = "cpu", limits: Limits | None = None,
               max_waiting: int = 1024, max_uploads: int = 16) -> Guard:
    """The web app over ``runs`` (run folders, or a mapping of name to folder), each loaded once: an
    ASGI app (the FastAPI app inside :class:`Guard`, as ``.fastapi``) for uvicorn or a test client."""
    limits = limits or Limits()
    named = dict(runs) if isinstance(runs, Mapping) else run_names(list(runs))
    if not named:
        raise CvaeError("name at least one run folder to serve")
    served = {name: ServedRun(name, path, device=device, limits=limits) for name, path in named.items()}
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvae-model")  # one computation at a time
    static = {name: _static(name) for name in STATIC}

    app = FastAPI(title="cvae", version="1", description="Generate, reconstruct, transfer, score and encode with "
                  "trained conditional VAEs. Every operation is the function the `cvae` command line calls.",
                  docs_url=None, redoc_url=None)
    app.state.served = served

    async def compute(fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(worker, partial(fn, *args, **kwargs))

    def run_of(name: str) -> ServedRun:
        if name not in served:
            raise HTTPException(404, f"no run named {name!r}; this server serves: {', '.join(served)}")
        return served[name]

    @app.exception_handler(CvaeError)
    async def _cvae_error(request: Request, e: CvaeError):
        return JSONResponse({"detail": as_field_names(str(e))}, status_code=415 if isinstance(e, UploadError) else 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):  # the router's own words, made to say what to do
        detail = e.detail
        if e.status_code == 404 and detail == "Not Found":
            detail = f"nothing at {request.url.path}; the API's operations are listed at /docs"
        elif e.status_code == 405 and detail == "Method Not Allowed":
            detail = f"{request.url.path} does not take {request.method}; the API's operations are listed at /docs"
        return JSONResponse({"detail": detail}, status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        return JSONResponse({"detail": _one_line(e.errors())}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(e).__name__}); the server's log has the details"},
                            status_code=500)

    # -- the page -----------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page():
        return Response(static["index.html"], media_type=STATIC["index.html"])

    @app.get("/docs", include_in_schema=False)
    def docs():  # the reference written from the OpenAPI document: Swagger's page needs a CDN, which the policy refuses
        return Response(api_page(app.openapi()), media_type="text/html; charset=utf-8")

    @app.get("/static/{name}", include_in_schema=False)
    def asset(name: str):
        if name not in static:
            raise HTTPException(404, f"no file {name!r}")
        return Response(static[name], media_type=STATIC[name], headers={"cache-control": "no-cache"})

    # -- the API ------------------------------------------------------------------------------
    @app.get("/v1/runs", summary="The runs this server serves, with their conditions, latents and metrics")
    def list_runs():
        return {"runs": [r.info() for r in served.values()]}

    @app.get("/v1/runs/{run}", summary="One run: conditions, KL per latent dimension, detector, pictures, metrics")
    def one_run(run: str):
        return run_of(run).info()

    @app.get("/v1/runs/{run}/pictures/{picture}", summary="A picture the run folder holds (samples.png, ...)",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def picture(run: str, picture: str):
        r = run_of(run)
        if picture not in r.pictures:
            raise HTTPException(404, f"run {run!r} has no picture {picture!r}; it has: {', '.join(r.pictures) or 'none'}")
        return Response(r.pictures[picture].read_bytes(), media_type="image/png")

    @app.post("/v1/runs/{run}/generate", summary="Generate examples for a condition (cvae sample)",
              responses={200: {"content": {"application/json": {}, "image/png": {}}}})
    async def generate(run: str, req: GenerateRequest):
        r = run_of(run)
        if req.format == "png" and r.kind != "image":
            raise HTTPException(422, f"format 'png' is for image runs; run {run!r} models {r.kind} data (use json)")
        out, _ = await compute(r.generate, condition=req.condition, n=req.n, seed=req.seed,
                               temperature=req.temperature, draw=req.draw, guidance=req.guidance, steer=req.steer)
        if req.format == "png":
            import base64

            return Response(base64.b64decode(out["png"]), media_type="image/png")
        return out

    @app.post("/v1/runs/{run}/decode", summary="Decode the prior's centre with latent dimensions moved (the sliders)")
    async def decode(run: str, req: DecodeRequest):
        r = run_of(run)
        return await compute(r.decode, values=req.values, condition=req.condition)

    @app.post("/v1/runs/{run}/traverse", summary="One latent dimension at a time, highest KL first (cvae traverse)")
    async def traverse(run: str, req: TraverseRequest):
        r = run_of(run)
        return await compute(r.traverse, condition=req.condition, dims=req.dims, top=req.top, steps=req.steps,
                             low=req.low, high=req.high)

    async def _read(file: UploadFile, r: ServedRun) -> bytes:
        data = await file.read(r.limits.max_upload_bytes + 1)
        if len(data) > r.limits.max_upload_bytes:
            raise HTTPException(413, f"the uploaded file is over the limit of {r.limits.max_upload_bytes / 2**20:.3g} MB")
        return data

    @app.post("/v1/runs/{run}/reconstruct", summary="Encode and decode an uploaded file (cvae reconstruct)")
    async def reconstruct(run: str, file: Upload, condition: OwnCondition = ""):
        r = run_of(run)
        return _as_sent(await compute(r.reconstruct, await _read(file, r), condition=condition), file)

    @app.post("/v1/runs/{run}/transfer", summary="Decode an uploaded file with other conditions (cvae transfer)")
    async def transfer(run: str, file: Upload, condition: OwnCondition = "", targets: Targets = ""):
        r = run_of(run)
        goals = [t.strip() for t in targets.split(";") if t.strip()] or None
        return _as_sent(await compute(r.transfer, await _read(file, r), condition=condition, targets=goals), file)

    @app.post("/v1/runs/{run}/score", summary="Anomaly scores against the run's threshold (cvae anomaly score)")
    async def score(run: str, file: Upload, condition: OwnCondition = ""):
        r = run_of(run)
        return _as_sent(await compute(r.score, await _read(file, r), condition=condition), file)

    @app.post("/v1/runs/{run}/encode", summary="Posterior means and variances of an uploaded file (cvae embed)")
    async def encode(run: str, file: Upload, condition: OwnCondition = ""):
        r = run_of(run)
        return _as_sent(await compute(r.encode, await _read(file, r), condition=condition), file)

    @app.post("/v1/runs/{run}/classify", summary="Class probabilities of an uploaded file (cvae classify)")
    async def classify(run: str, file: Upload, attribute: Attribute = ""):
        r = run_of(run)
        return _as_sent(await compute(r.classify, await _read(file, r), attribute=attribute), file)

    guarded = Guard(app, upload_limit=limits.max_upload_bytes, max_waiting=max_waiting, max_uploads=max_uploads)
    guarded.fastapi, guarded.worker = app, worker
    return guarded
