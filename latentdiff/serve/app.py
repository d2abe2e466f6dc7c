"""The FastAPI app of ``latentdiff serve``: the page (``static/``) and the HTTP API.

    GET    /                   the page
    GET    /api/models         the models: name, task, what each supports, image size, sampling defaults
    POST   /api/generate       JSON request -> JSON {"images": [base64 PNG], "parameters", "seeds", "model"}
                               (``Accept: image/png`` or ``?format=png``: the first PNG itself)
    POST   /api/jobs           the same request, queued -> {"id"}; the page polls it
    GET    /api/jobs/{id}      {"state", "step", "steps", "preview" (base64 PNG of the latest x0 prediction),
                               "result" (as /api/generate's, when done), "error"}
    DELETE /api/jobs/{id}      cancel (a running job stops at its next sampler step)
    POST   /api/read-png       a PNG (raw body or multipart) -> {"parameters", "config"} from its text chunks
    GET    /api/options        the sampler, spacing and thresholding names, and the server's limits
    GET    /api/status         the queue: waiting, running, concurrency, limits, loaded models

Every refusal is JSON ``{"error": "field: message", "field": ...}`` with a 4xx status: 422 for a value
(naming the field), 404 for an unknown model or job, 413 for an upload over the limits, 429 when the
queue is full, 504 past the request timeout; a cancelled request is 409.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from latentdiff.serve.engine import preview_png, run_plan
from latentdiff.serve.jobs import Job, JobQueue, QueueFull
from latentdiff.serve.loading import ModelCache
from latentdiff.serve.models import ModelRegistry
from latentdiff.serve.plan import Plan, plan_request
from latentdiff.serve.schema import THRESHOLDS, RequestError, ServeLimits, parse_request
from latentdiff.serve.uploads import check_size, guard_decompression_bombs, open_upload

STATIC = Path(__file__).parent / "static"


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """How the server queues and limits requests (``latentdiff serve`` flags).

    Attributes:
        limits: per-request limits (steps, images, uploads).
        concurrency: requests sampled at the same time (worker threads); 1 suits a CPU.
        max_queue: requests that may wait; one more is refused with 429 at once.
        timeout: seconds a request may take from being queued to its last step (504 after).
        max_loaded: models kept loaded (least recently used dropped first).
        use_ema: sample with the EMA weights where a checkpoint has them.
        device: where the models run (``cpu``, ``cuda``, ``cuda:1``); the noise is drawn on the CPU
            either way, so a seed gives the same image on both.
    """

    limits: ServeLimits = ServeLimits()
    concurrency: int = 1
    max_queue: int = 8
    timeout: float = 300.0
    max_loaded: int = 2
    use_ema: bool = True
    device: str = "cpu"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def result_body(job: Job) -> dict:
    """/api/generate's JSON of a finished job: base64 PNGs, their parameters texts, seeds, model name."""
    images = job.result
    return {"images": [_b64(r.png) for r in images], "parameters": [r.parameters_text for r in images],
            "seeds": [r.parameters["seed"] for r in images], "model": job.plan.model.name,
            "info": [r.parameters for r in images]}


def error_response(status: int, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": f"{field}: {message}" if field else message, "field": field}, status_code=status,
                        headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestError(413, f"the request body is {int(length) / 2**20:.1f} MB, over this server's limit "
                           f"of {limit / 2**20:.1f} MB (--max-upload-mb)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the request body is over this server's limit of {limit / 2**20:.1f} MB "
                               "(--max-upload-mb)")
        chunks.append(chunk)
    return b"".join(chunks)


class Server:
    """What the routes share: the models, settings, model cache and queue of one app."""

    def __init__(self, registry: ModelRegistry, settings: ServeSettings):
        self.registry, self.settings, self.limits = registry, settings, settings.limits
        self.cache = ModelCache(settings.max_loaded, settings.use_ema, settings.device)
        self.queue = JobQueue(lambda plan, on_step: run_plan(plan, self.cache, on_step), settings.concurrency,
                              settings.max_queue, settings.timeout)

    async def planned(self, request: Request) -> Plan:
        """The request's JSON body, parsed, checked against its model, its uploads decoded."""
        body = await read_body(request, self.limits.max_body_bytes)
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(400, f"the body is not JSON ({err})") from None
        return await run_in_threadpool(plan_request, parse_request(data, self.limits), self.registry, self.limits)

    def submit(self, plan: Plan) -> Job:
        try:
            return self.queue.submit(plan, plan.total_steps)
        except QueueFull as full:
            raise RequestError(429, str(full)) from None

    def job_named(self, job_id: str) -> Job:
        job = self.queue.get(job_id)
        if job is None:
            raise RequestError(404, f"no job {job_id[:40]!r} (finished jobs are kept for a while only)", "id")
        return job

    async def finished(self, job: Job) -> bool:
        """Wait for ``job`` to finish (False, and the job cancelled, if it has not long after its timeout)."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        job.when_finished(lambda j: loop.call_soon_threadsafe(lambda: done.done() or done.set_result(j)))
        try:
            await asyncio.wait_for(done, self.settings.timeout + 120)
        except asyncio.TimeoutError:
            self.queue.cancel(job.id)
            return False
        return True


def create_app(registry: ModelRegistry, settings: ServeSettings | None = None) -> FastAPI:
    """The server's app over the models of ``registry``; its queue's workers start with the first request
    and stop when the app shuts down. Sets Pillow's decompression-bomb limit (for the whole process)
    from the settings."""
    server = Server(registry, settings or ServeSettings())
    guard_decompression_bombs(server.limits.max_pixels)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await run_in_threadpool(server.queue.close)

    app = FastAPI(title="latentdiff", summary="latentdiff's models: a page and an HTTP API", lifespan=lifespan)
    app.state.server, app.state.cache = server, server.cache
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(RequestError)
    async def refused(request: Request, err: RequestError):
        headers = {"Retry-After": "1"} if err.status == 429 else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    _info_routes(app, server)
    _generate_routes(app, server)
    return app


def _info_routes(app: FastAPI, server: Server) -> None:
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/api/models")
    async def models():
        return [server.registry.describe(m) for m in server.registry.models.values()]

    @app.get("/api/options")
    async def options():
        from latentdiff.sampling import SAMPLERS
        from latentdiff.schedules import SPACINGS

        return {"samplers": sorted(SAMPLERS), "spacings": list(SPACINGS), "thresholds": list(THRESHOLDS),
                "limits": dataclasses.asdict(server.limits)}

    @app.get("/api/status")
    async def status():
        return {**server.queue.stats(), "limits": dataclasses.asdict(server.limits),
                "loaded": server.cache.loaded_names()}

    @app.post("/api/read-png")
    async def read_png(request: Request):
        return await run_in_threadpool(png_fields, await uploaded_file(request, server.limits), server.limits)


def _generate_routes(app: FastAPI, server: Server) -> None:
    @app.post("/api/generate")
    async def generate(request: Request, format: str | None = None):
        if format not in (None, "png", "json"):
            raise RequestError(422, f"format must be png or json, got {format!r}", "format")
        accept = request.headers.get("accept", "")
        as_png = format == "png" or (format is None and "image/png" in accept and "application/json" not in accept)
        job = server.submit(await server.planned(request))
        try:
            if not await server.finished(job):
                return error_response(504, f"no answer within {server.settings.timeout:g} s (--timeout)")
        finally:
            server.queue.forget(job)
        if job.state != "done":
            return error_response(job.status, job.error or job.state)
        if as_png:
            first = job.result[0]
            return Response(first.png, media_type="image/png", headers={"X-Seed": str(first.parameters["seed"])})
        return result_body(job)

    @app.post("/api/jobs")
    async def create_job(request: Request):
        job = server.submit(await server.planned(request))
        return {"id": job.id, "state": job.state, "steps": job.steps}

    @app.get("/api/jobs/{job_id}")
    async def read_job(job_id: str):
        job = server.job_named(job_id)
        preview = None
        if job.preview is not None:
            x0, autoencoder = job.preview
            preview = _b64(await run_in_threadpool(preview_png, x0, autoencoder))
        return {"id": job.id, "state": job.state, "step": job.step, "steps": job.steps, "preview": preview,
                "result": result_body(job) if job.state == "done" else None, "error": job.error}

    @app.delete("/api/jobs/{job_id}")
    async def cancel_job(job_id: str):
        job = server.queue.cancel(job_id) or server.job_named(job_id)  # 404 for an unknown job
        return {"id": job.id, "state": job.state}


async def uploaded_file(request: Request, limits: ServeLimits) -> bytes:
    """An uploaded file: the raw body, or the first file of a multipart form."""
    body = await read_body(request, limits.max_upload_bytes + 2**16)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        request._body = body  # Starlette's form parser reads the body already read
        form = await request.form()
        files = [v for v in form.values() if hasattr(v, "read")]
        if not files:
            raise RequestError(422, "the form has no file", "file")
        body = await files[0].read()
    check_size(body, "file", limits)
    return body


def png_fields(data: bytes, limits: ServeLimits) -> dict:
    """A PNG's generation parameters: {"parameters": parse_parameters(its text), "config": its JSON
    chunk ({"request", "config"}), "text": the text itself}; 422 for a PNG without them."""
    from latentdiff.io.png_meta import parse_parameters, read_png_parameters

    open_upload(data, "file", limits, formats=("PNG",))
    text, chunk = read_png_parameters(data)
    if text is None and chunk is None:
        raise RequestError(422, "this PNG carries no generation parameters (no 'parameters' or 'latentdiff' "
                           "text chunk)", "file")
    try:
        parameters = parse_parameters(text) if text is not None else None
    except ValueError:
        parameters = None
    return {"parameters": parameters, "config": chunk, "text": text}


@contextlib.contextmanager
def running_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
    """Serve ``app`` with uvicorn in a background thread (port 0: a free one); yields its base URL and
    stops the server (its lifespan shutdown included) on exit."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="latentdiff-uvicorn", daemon=True)
    thread.start()
    started = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - started > 30:
            sock.close()
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
