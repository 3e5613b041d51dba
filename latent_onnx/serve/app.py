"""The HTTP server (FastAPI on uvicorn): the JSON API under /v1 and the page at /.

Every error is a JSON object {"error": "<one line>"} with a 4xx status for anything a request can get
wrong; generation runs in a bounded pool of worker threads (serve.jobs).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import ipaddress
import json
import logging
import secrets
import socket
from collections.abc import Callable, Mapping
from pathlib import Path

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from .. import __version__
from ..contracts import CONDITIONS
from ..errors import InputError, LatentOnnxError, SamplingError
from ..pipeline import PATH_ROLES, PATHS, Pipeline
from .jobs import Busy, Finished, Job, JobPool
from .schema import SAMPLER_REQUEST_FIELDS, Limits, RequestError, parse_request, pick_bundle, request_schema

STATIC = Path(__file__).resolve().parent / "static"
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]"]  # Host header names of a loopback server
KEEPALIVE_S = 1.0  # an event stream sends a comment line at least this often (so a gone client is noticed)
DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
log = logging.getLogger("latent_onnx.serve")


def _one_line(message) -> str:
    return " ".join(str(message).split())


def _status_of(error: LatentOnnxError) -> int:
    """422 for what the request asked for; 500 for the server's own bundle, device or output failing."""
    return 422 if isinstance(error, (InputError, SamplingError)) else 500


def _error(status: int, message, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": _one_line(message)}, status_code=status, headers=headers)


def _bundle_json(pipe: Pipeline, default: bool) -> dict:
    bundle = pipe.bundle
    return {
        "name": bundle.name,
        "description": bundle.description,
        "license": bundle.license,
        "default": default,
        "classes": len(bundle.classes or []),
        "captions": bundle.vocabulary is not None and bundle.has_graph("caption_grad"),
        "image": {"height": bundle.image_hw[0], "width": bundle.image_hw[1]},
        "paths": [path for path in PATHS if bundle.has_graph(PATH_ROLES[path])],
        "presets": sorted(bundle.presets),
        "sampler": pipe.sampler_config().to_dict(),
        # the settings a request of each kind of condition runs with (a bundle may set some apart by kind)
        "sampler_by_condition": {kind: pipe.sampler_config(condition=kind).to_dict() for kind in CONDITIONS},
    }


def result_json(finished: Finished) -> dict:
    """A finished job as the API's JSON: settings used, and each image as base64 PNG with its own figures."""
    result = finished.result
    images = [
        {
            "index": index,
            "seed": result.options.seed,
            "logp": float(logp),
            "acceptance": float(acceptance),
            "command": text["Comment"],
            "png": base64.b64encode(png).decode("ascii"),
        }
        for index, logp, acceptance, text, png in zip(
            result.indices, result.logp, result.acceptance, finished.texts, finished.pngs
        )
    ]
    return {
        "bundle": result.bundle_name,
        "seed": result.options.seed,
        "options": result.options.describe(),
        "sampler": result.config.to_dict(),
        "images": images,
    }


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, allow_nan=False)}\n\n"


async def _read_json_body(request: Request, limit: int) -> bytes:
    """The raw body of a JSON request, refused (415, 413) before more than `limit` bytes are read."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise RequestError(415, "send the options as a JSON object with Content-Type: application/json")
    declared = request.headers.get("content-length", "")
    too_large = RequestError(413, f"the body is larger than this server's limit of {limit} bytes")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _unless_gone(request: Request, job: Job, future: asyncio.Future):
    """The future's result; None (the job cancelled) when the client disconnects first."""
    while not future.done():
        await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
        if not future.done() and await request.is_disconnected():
            job.cancel()
            return None
    return future.result()


class _HostCheck:
    """Refuses (421, JSON) requests whose Host header names none of `hosts` (port ignored)."""

    def __init__(self, app, hosts: list[str]):
        self.app, self.hosts = app, {host.lower() for host in hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            header = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
            host = header[: header.find("]") + 1] if header.startswith("[") else header.split(":")[0]
            if host not in self.hosts:
                response = _error(421, f"this server answers only to the host names {', '.join(sorted(self.hosts))}")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def create_app(
    bundles: Mapping[str, Pipeline],
    *,
    limits: Limits = Limits(),
    workers: int = 1,
    capacity: int = 32,
    token: str | None = None,
    cors_origins: tuple[str, ...] = (),
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The server's app for pipelines by bundle name (the first is the default).

    allowed_hosts: the Host header values accepted (None: any); a loopback server accepts only loopback
    names, which keeps web pages on other names (DNS rebinding) out.
    """
    pool = JobPool(workers, capacity)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        pool.shutdown()

    app = FastAPI(
        title="latent-onnx",
        version=__version__,
        lifespan=lifespan,
        description="Conditional image generation by Langevin sampling of a generator's latent code.",
    )
    app.state.pool = pool
    if allowed_hosts is not None:
        app.add_middleware(_HostCheck, hosts=allowed_hosts)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Accept"],
        )

    @app.exception_handler(RequestError)
    async def request_error(request, error: RequestError):
        return _error(error.status, error, error.headers)

    @app.exception_handler(LatentOnnxError)
    async def runtime_error(request, error: LatentOnnxError):
        return _error(_status_of(error), error)

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        return _error(error.status_code, error.detail, getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, error: RequestValidationError):
        first = error.errors()[0]
        return _error(422, f"{'.'.join(str(part) for part in first['loc'])}: {first['msg']}")

    @app.exception_handler(Exception)
    async def internal_error(request, error: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, "internal server error (the server's log has the details)")

    def authorize(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
            raise RequestError(
                401, "this server needs the header Authorization: Bearer <its token>", {"WWW-Authenticate": "Bearer"}
            )

    def submit(pipe: Pipeline, options, progress: Callable[[dict], None] | None = None, preview_every: int = 0) -> Job:
        try:
            return pool.submit(pipe, options, progress, preview_every)
        except Busy as error:
            raise RequestError(429, error, {"Retry-After": "1"}) from None

    async def parsed(request: Request):
        return parse_request(await _read_json_body(request, limits.body_bytes), bundles, limits)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(
            STATIC / "index.html",
            headers={
                "Content-Security-Policy": PAGE_POLICY,
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-store",
            },
        )

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/v1/health", summary="Whether the server is up (no token needed)")
    async def health():
        return {
            "status": "ok",
            "version": __version__,
            "bundles": list(bundles),
            "jobs": pool.active,
            "workers": pool.workers,
            "capacity": pool.capacity,
        }

    api = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    @api.get("/bundles", summary="The bundles this server was started with, and the sampler settings a request may set")
    async def list_bundles():
        settings = [
            {"name": name, "help": spec.metadata["help"], "choices": spec.metadata["choices"]}
            for name, spec in SAMPLER_REQUEST_FIELDS.items()
        ]
        return {
            "bundles": [_bundle_json(pipe, i == 0) for i, pipe in enumerate(bundles.values())],
            "sampler_settings": settings,
            "limits": {**dataclasses.asdict(limits), "jobs": capacity},
        }

    @api.get("/bundles/{name}/classes", summary="A bundle's classes: index and names (display name first)")
    async def classes(name: str):
        pipe = pick_bundle(bundles, name, 404)
        return {
            "bundle": name,
            "classes": [{"index": i, "names": names} for i, names in enumerate(pipe.bundle.classes or [])],
        }

    @api.get("/bundles/{name}/vocabulary", summary="The words a bundle's captions may use")
    async def vocabulary(name: str):
        bundle = pick_bundle(bundles, name, 404).bundle
        captions = bundle.vocabulary is not None and bundle.has_graph("caption_grad")
        return {
            "bundle": name,
            "words": [w for w in bundle.vocabulary if w != "<eos>"] if captions else [],
            "max_words": bundle.max_tokens - 1 if captions else 0,
        }

    generate_doc = {"requestBody": {"required": True, "content": {"application/json": {"schema": request_schema()}}}}

    @api.post(
        "/generate",
        openapi_extra=generate_doc,
        response_class=JSONResponse,
        summary="Generate images",
        responses={
            200: {
                "content": {"image/png": {}},
                "description": "JSON with each image as base64 PNG; the PNG itself for n = 1 with Accept: image/png",
            }
        },
    )
    async def generate(request: Request):
        """Generate images; each PNG is the file `latent-onnx generate` writes for the same settings."""
        pipe, options, _ = await parsed(request)
        job = submit(pipe, options)
        finished = await _unless_gone(request, job, job.done)
        if finished is None:
            return Response(status_code=499)
        if len(finished.pngs) == 1 and "image/png" in request.headers.get("accept", ""):
            return Response(finished.pngs[0], media_type="image/png")
        return JSONResponse(result_json(finished))

    @api.post(
        "/generate/stream",
        openapi_extra=generate_doc,
        summary="Generate images, streaming progress (server-sent events)",
        responses={
            200: {
                "content": {"text/event-stream": {}},
                "description": "events `progress` "
                "{step, total, preview: base64 PNG of the batch's chains}, then `result` (the JSON of "
                "/v1/generate) or `error` {error, status}",
            }
        },
    )
    async def generate_stream(
        request: Request,
        preview_every: int | None = Query(
            None, ge=1, description="Steps between previews (default: about 20 per batch)"
        ),
    ):
        """Like /v1/generate, as events; disconnecting cancels the chains."""
        pipe, options, config = await parsed(request)
        events: asyncio.Queue = asyncio.Queue()
        job = submit(pipe, options, events.put_nowait, preview_every or max(1, config.steps // 20))
        job.done.add_done_callback(lambda _: events.put_nowait(None))
        ready = await _unless_gone(request, job, job.ready)
        if ready is None:
            return Response(status_code=499)
        if not ready:
            await job.done  # raises why it failed, as a 4xx or 5xx answer
        return StreamingResponse(
            _event_stream(job, events),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    app.include_router(api)
    return app


async def _event_stream(job: Job, events: asyncio.Queue):
    """A job's progress events, then its result or error; the job is cancelled when the stream ends early."""
    getter = None
    try:
        while True:
            getter = getter or asyncio.ensure_future(events.get())
            done, _ = await asyncio.wait({getter}, timeout=KEEPALIVE_S)
            if not done:
                yield ": keepalive\n\n"
                continue
            event, getter = getter.result(), None
            if event is None:
                break
            yield _sse("progress", event)
        try:
            yield _sse("result", result_json(job.done.result()))
        except LatentOnnxError as error:
            yield _sse("error", {"error": _one_line(error), "status": _status_of(error)})
        except Exception:
            log.exception("internal error in a generate stream")
            yield _sse("error", {"error": "internal server error (the server's log has the details)", "status": 500})
    finally:
        job.cancel()
        if getter is not None:
            getter.cancel()


def listening_socket(host: str, port: int, allow_remote: bool) -> socket.socket:
    """A socket bound to host:port; InputError for a non-loopback host without allow_remote, or a busy port."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise InputError(f"cannot resolve --host {host}: {error.strerror}") from None
    if not ipaddress.ip_address(address[0]).is_loopback and not allow_remote:
        raise InputError(
            f"--host {host} is reachable from other machines; pass --allow-remote (and better --token) "
            "to serve there, or keep the default 127.0.0.1"
        )
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {error.strerror}; choose another --port") from None
    return sock


def run(bundles: Mapping[str, Pipeline], sock: socket.socket, say: Callable[[str], None], **settings) -> None:
    """Serve `create_app(bundles, **settings)` on a bound socket until interrupted."""
    host, port = sock.getsockname()[:2]
    loopback = ipaddress.ip_address(host).is_loopback
    shown = f"[{host}]" if ":" in host else host
    if not loopback:
        say(
            f"warning: serving on {host}, which other machines can reach"
            + ("" if settings.get("token") else "; without --token anyone who reaches it can generate")
        )
    fragment = f"#token={settings['token']}" if settings.get("token") else ""
    app = create_app(bundles, allowed_hosts=LOOPBACK_HOSTS if loopback else None, **settings)
    say(f"serving http://{shown}:{port}/{fragment} (bundles: {', '.join(bundles)}; API under /v1, its docs at /docs)")
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
