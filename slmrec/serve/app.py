"""The HTTP service (FastAPI): top-K for a known user or a posted history, micro-batched, logged.

    app = create_app(ServerState(rec, cfg, log_dir, promoted=Path("models/promoted.json")))
    uvicorn.run(app, host="127.0.0.1", port=8000)          # `slmrec serve` does this

Endpoints
    GET  /recommend/{user_id}?k=10   known user, history from the DuckDB store
    POST /recommend {"items": [...], "k": 10}   a caller's history (anonymous / new users)
    GET  /health   live;   GET /ready   model loaded;   GET /model   the served model's card
    GET  /metrics  Prometheus text: requests, errors, latency histogram, batch sizes, reloads

Answers: {"user_id", "items", "scores", "model", "fallback", "ignored_items", "request_id"}.
Errors: {"error": message, "request_id", ["detail"]}, and nothing changes: unknown user -> 404
naming the user (or the popularity list under serve.cold_start: popular); a history with no known
item -> 404 for a user, 422 for a posted history (same cold-start rule); k outside 1..max_k,
malformed JSON, a bad item list -> 422; anything unexpected -> 500, and the process keeps serving.

Micro-batching: requests queue up; one worker takes up to `max_batch` of them, waiting at most
`max_wait_ms` for the batch to fill, and answers them with one `Recommender.answer` call (one
forward pass) in its inference thread. max_batch = 1 switches batching off.

Every 2xx answer is appended to the answer log (slmrec/serve/answer_log.py) before the response
leaves, so log rows == 2xx answers; the log is flushed at shutdown (uvicorn turns SIGTERM into a
graceful shutdown: in-flight requests finish, then the lifespan's shutdown flushes the log).

Hot reload (`promoted` set, i.e. no --model): every `reload_poll_seconds` the service reads the
promotion record; a new content hash is loaded in a background thread and swapped in with one
assignment. A batch already running keeps the Recommender it started with; each answer (and log
row) carries the hash of the model that produced it. A broken new model is reported (metrics,
/ready detail, stderr) and the old one keeps serving. The DuckDB histories are re-read when the
store file changes (same poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from slmrec.config import ServeConfig
from slmrec.serve.answer_log import AnswerLog, log_row
from slmrec.serve.recommender import Answer, EmptyHistory, Query, Recommender, UnknownUser
from slmrec.serve.sources import read_promoted

MAX_HISTORY = 10_000  # items in a posted history: a bounded request
RELOAD_RETRY_SECONDS = 60.0  # a promoted model that failed to load is tried again after this long


class HistoryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[StrictStr | StrictInt] = Field(max_length=MAX_HISTORY)  # original item ids, oldest first
    k: StrictInt | None = None


class Metrics:
    """Prometheus collectors in their own registry (several apps in one process do not collide)."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("slmrec_requests", "HTTP requests", ["endpoint", "method", "status"], registry=r)
        self.errors = Counter("slmrec_request_errors", "HTTP answers with status >= 400", ["endpoint", "status"],
                              registry=r)
        self.latency = Histogram("slmrec_request_latency_seconds", "request latency", ["endpoint"], registry=r,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.batch_size = Histogram("slmrec_batch_size", "queries answered per forward pass", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.answers = Counter("slmrec_answers", "2xx recommendation answers", ["fallback"], registry=r)
        self.reloads = Counter("slmrec_model_reloads", "hot reloads of the promoted model", ["result"], registry=r)
        self.model_info = Gauge("slmrec_model_info", "the served model (value 1)", ["content_hash"], registry=r)
        self.history_refreshes = Counter("slmrec_history_refreshes", "re-reads of the DuckDB histories", registry=r)


class MetricsMiddleware:
    """Pure ASGI middleware: requests/errors by endpoint and status, latency (cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), {}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:  # an exception reaching here is answered 500 by the server-error handler outside
            code = str(status.get("code", 500))
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(endpoint, scope["method"], code).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
            if int(code) >= 400:
                self.metrics.errors.labels(endpoint, code).inc()


@dataclass
class ServerState:
    rec: Recommender  # swapped by hot reload with one assignment
    cfg: ServeConfig
    log_dir: Path
    promoted: Path | None = None  # the promotion record to follow (None: the model is pinned)
    root: Path = Path(".")
    loader: Callable[[Path], Recommender] | None = None  # model dir -> Recommender (same maps/options)
    metrics: Metrics = field(default_factory=Metrics)
    last_reload_error: str | None = None
    failed_reload: tuple[str, float] | None = None  # (content hash, monotonic time) of the last failed load
    reloads: list[dict] = field(default_factory=list)  # {"from", "to", "at"} of every swap


class MicroBatcher:
    """Collect queued queries into batches (max_batch, max_wait_ms) and answer each with one call."""

    def __init__(self, state: ServerState, pool: ThreadPoolExecutor):
        self.state, self.pool = state, pool
        self.queue: asyncio.Queue = asyncio.Queue()
        self.max_batch = max(1, int(state.cfg.max_batch))
        self.max_wait = max(0.0, float(state.cfg.max_wait_ms)) / 1000.0

    async def submit(self, query: Query) -> tuple[Answer | UnknownUser | EmptyHistory, Recommender]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((query, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                with contextlib.suppress(asyncio.QueueEmpty):
                    batch.append(self.queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            rec = self.state.rec  # this batch finishes on this model even if a reload swaps it meanwhile
            self.state.metrics.batch_size.observe(len(batch))
            try:
                results = await loop.run_in_executor(self.pool, rec.answer, [q for q, _ in batch])
            except Exception as err:  # noqa: BLE001 - handed to every waiting request, which answers 500
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():  # a client that went away cancelled its future
                    future.set_result((result, rec))


def _error(status: int, message: str, request_id: str | None = None, **extra) -> JSONResponse:
    body = {"error": message, "request_id": request_id, **extra}
    return JSONResponse(body, status_code=status, headers={"X-Request-ID": request_id} if request_id else None)


def _clean_errors(errors) -> list[dict]:
    """pydantic error dicts without unserialisable context objects."""
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg")), "type": e.get("type")} for e in errors]


async def reload_if_promoted(state: ServerState, pool: ThreadPoolExecutor) -> bool:
    """Load the model the promotion record names if it is not the one served; True when swapped."""
    try:
        model_dir, record = read_promoted(state.promoted, state.root)
    except (FileNotFoundError, ValueError) as err:  # ValueError covers malformed JSON too
        state.last_reload_error = f"promotion record: {err}"
        return False
    if record["content_hash"] == state.rec.model_hash:
        return False
    failed = state.failed_reload
    if failed and failed[0] == record["content_hash"] and time.monotonic() - failed[1] < RELOAD_RETRY_SECONDS:
        return False  # the same broken candidate: retry later, not on every poll
    loop = asyncio.get_running_loop()
    try:
        new = await loop.run_in_executor(pool, state.loader, model_dir)
        if new.model_hash != record["content_hash"]:
            raise ValueError(f"{state.promoted} records {record['content_hash'][:12]}…, {model_dir} hashes to "
                             f"{new.model_hash[:12]}…")
    except Exception as err:  # noqa: BLE001 - a broken candidate must not take the service down: reported
        state.last_reload_error = f"reload of {model_dir} failed: {type(err).__name__}: {err}"
        state.failed_reload = (record["content_hash"], time.monotonic())
        state.metrics.reloads.labels("failed").inc()
        print(f"slmrec serve: {state.last_reload_error}; still serving {state.rec.model_hash[:12]}", file=sys.stderr,
              flush=True)
        return False
    old = state.rec
    state.rec = new  # the swap: one assignment; running batches hold their own reference to `old`
    state.metrics.model_info.labels(old.model_hash).set(0)
    state.metrics.model_info.labels(new.model_hash).set(1)
    state.metrics.reloads.labels("ok").inc()
    state.last_reload_error, state.failed_reload = None, None
    state.reloads.append({"from": old.model_hash, "to": new.model_hash, "at": time.time(), "path": str(model_dir)})
    print(f"slmrec serve: now serving {new.model_hash[:12]} ({model_dir})", file=sys.stderr, flush=True)
    return True


async def _watch(state: ServerState, pool: ThreadPoolExecutor) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(state.cfg.reload_poll_seconds)
        if state.promoted is not None and state.loader is not None:
            await reload_if_promoted(state, pool)
        rec = state.rec
        try:
            if await loop.run_in_executor(pool, rec.history.refresh_if_changed):
                state.metrics.history_refreshes.inc()
        except Exception as err:  # noqa: BLE001 - keep the last good histories; say why
            print(f"slmrec serve: history refresh failed ({type(err).__name__}: {err}); keeping the last snapshot",
                  file=sys.stderr, flush=True)


def create_app(state: ServerState) -> FastAPI:
    cfg, metrics = state.cfg, state.metrics
    infer_pool = ThreadPoolExecutor(1, thread_name_prefix="infer")  # one forward pass at a time
    load_pool = ThreadPoolExecutor(1, thread_name_prefix="reload")  # reloads/refreshes never block inference
    batcher = MicroBatcher(state, infer_pool)
    metrics.model_info.labels(state.rec.model_hash).set(1)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.log = AnswerLog(state.log_dir, cfg.log_flush_rows, cfg.log_flush_seconds)
        tasks = [asyncio.create_task(batcher.run(), name="batcher"), asyncio.create_task(_watch(state, load_pool))]
        try:
            yield
        finally:  # uvicorn has let in-flight requests finish: nothing is waiting on the batcher
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            app.state.log.close()  # flushes every queued row
            infer_pool.shutdown(wait=True)
            load_pool.shutdown(wait=True)
            print(f"slmrec serve: answer log closed ({app.state.log.rows_written} rows in "
                  f"{app.state.log.files_written} files under {state.log_dir})", file=sys.stderr, flush=True)

    app = FastAPI(title="SLMRec recommendations", lifespan=lifespan)
    app.state.server = state

    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = _clean_errors(exc.errors())
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return _error(422, f"invalid request: {message}", uuid.uuid4().hex, detail=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):  # unknown route, wrong method
        return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", uuid.uuid4().hex)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        print(f"slmrec serve: unexpected {type(exc).__name__} on {request.url.path}: {exc}", file=sys.stderr, flush=True)
        return _error(500, f"internal error: {type(exc).__name__}", uuid.uuid4().hex)

    def check_k(k: int | None, request_id: str) -> JSONResponse | int:
        k = cfg.k if k is None else k
        if not 1 <= k <= cfg.max_k:
            return _error(422, f"k must be in 1..{cfg.max_k} (serve.max_k), got {k}", request_id)
        return k

    async def serve(query: Query, request: Request, request_id: str, t0: float) -> JSONResponse:
        result, rec = await batcher.submit(query)
        if isinstance(result, UnknownUser):
            return _error(404, str(result), request_id, user_id=result.user_id)
        if isinstance(result, EmptyHistory):
            status = 404 if query.user_id is not None else 422
            return _error(status, str(result), request_id, user_id=result.user_id, ignored_items=result.ignored)
        latency_ms = 1000.0 * (time.perf_counter() - t0)
        request.app.state.log.append(log_row(request_id, result, latency_ms))  # before the answer leaves
        metrics.answers.labels(result.fallback or "none").inc()
        body = {"user_id": result.user_id, "items": result.items, "scores": result.scores, "model": result.model,
                "fallback": result.fallback, "ignored_items": result.ignored_items, "request_id": request_id}
        return JSONResponse(body, headers={"X-Request-ID": request_id})

    @app.get("/recommend/{user_id}")
    async def recommend_user(user_id: str, request: Request, k: int | None = None):
        t0, request_id = time.perf_counter(), uuid.uuid4().hex
        k = check_k(k, request_id)
        if isinstance(k, JSONResponse):
            return k
        return await serve(Query(k=k, user_id=user_id), request, request_id, t0)

    @app.post("/recommend")
    async def recommend_history(body: HistoryRequest, request: Request):
        t0, request_id = time.perf_counter(), uuid.uuid4().hex
        k = check_k(body.k, request_id)
        if isinstance(k, JSONResponse):
            return k
        return await serve(Query(k=k, items=[str(i) for i in body.items]), request, request_id, t0)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        rec = state.rec
        if rec is None:
            return _error(503, "no model loaded")
        return {"ready": True, "model": rec.model_hash, "last_reload_error": state.last_reload_error}

    @app.get("/model")
    async def model():
        return {**state.rec.describe(), "reloads": state.reloads, "following": str(state.promoted) if state.promoted else None}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
