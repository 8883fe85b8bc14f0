"""The HTTP service (FastAPI): top-K for a known user or a posted history, micro-batched, logged, bounded.

    app = create_app(ServerState(rec, cfg, log_dir, promoted=Path("models/promoted.json")))
    uvicorn.run(app, host="127.0.0.1", port=8000, limit_concurrency=cfg.max_concurrency)   # `slmrec serve`

Endpoints
    GET  /recommend/{user_id}?k=10   known user, history from the DuckDB store
    POST /recommend {"items": [...], "k": 10}   a caller's history (anonymous / new users)
    GET  /health   the process answers;   GET /model   the served model's card (no paths, no params)
    GET  /ready    200 when serving can be trusted, else 503 with the reasons: served != promoted (a
                   promotion not loaded yet, or refused), the promotion record unreadable, a background
                   task restarting, the answer log unable to write
    GET  /metrics  Prometheus text: requests, errors, latency, batch sizes, shed requests, reloads, task
                   restarts, answer-log queue depth / rows spooled / written / quarantined / refused

Answers: {"user_id", "items", "scores", "model", "fallback", "ignored_items", "ignored_count", "request_id"}
(ignored_items: the first serve.echo_unknown unknown history items; ignored_count: all of them).
Errors: {"error": message, "request_id", ["detail"]}, and nothing changes: unknown user -> 404 (or the
popularity list under serve.cold_start: popular); a history with no known item -> 404 for a user, 422
for a posted history; k outside 1..max_k, an id longer than max_item_id_chars, malformed JSON, a bad
item list -> 422; a body over max_body_bytes -> 413 (not read further); overload -> 503 + Retry-After;
anything unexpected -> 500 for that request alone, and the process keeps serving.

Admission control. A query waits in a bounded queue (serve.max_queue: full -> 503 at once) for the
micro-batcher, which takes up to max_batch queries (waiting at most max_wait_ms for the batch to
fill) and answers them with one `Recommender.answer` call in its inference thread. Every request has
a deadline (serve.timeout_ms from arrival): a query is refused at once (503) when the forward passes
ahead of it (a moving average of the pass time) would take it past its deadline, is dropped from a
batch when it can no longer finish in time, and is answered 503 at its deadline if still waiting,
so under overload the model works only on answers that can still be delivered. A client that
disconnects before its answer is computed is dropped too, and one that disconnected before its
answer was logged is neither logged nor counted as delivered.
If a batch fails, its queries are answered one by one, so a bad query fails alone. uvicorn's
limit_concurrency (serve.max_concurrency) bounds the connections on top.

Every 2xx answer's row is durable in the answer log (fsynced: slmrec/serve/answer_log.py) before the
answer leaves; a row that cannot be made durable turns the answer into a 503. SIGTERM: uvicorn stops
accepting, lets in-flight requests finish (their rows included), then the lifespan closes the log.

Hot reload (`promoted` set, i.e. no --model): every `reload_poll_seconds` the watcher reads the
promotion record; a new content hash is loaded in a background thread, must answer a canary query
(`recommender.canary`: k items, finite scores, no history item) and is then swapped in with one
assignment. A batch already running keeps the Recommender it started with; each answer (and log
row) carries the hash of the model that produced it. A model that fails to load or fails the canary
is refused (metrics, /ready, stderr) and the old one keeps serving. The DuckDB histories are
refreshed when the store file changes (same poll). The batcher and the watcher are supervised
(slmrec/serve/supervise.py): an exception restarts them with backoff, and /ready says so meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from slmrec.serve.answer_log import AnswerLog, LogUnavailable, log_row
from slmrec.serve.recommender import Answer, EmptyHistory, Query, Recommender, UnknownUser, canary
from slmrec.serve.sources import read_promoted
from slmrec.serve.supervise import Supervisor

MAX_HISTORY = 10_000  # items in a posted history: a bounded request
RELOAD_RETRY_SECONDS = 60.0  # a promoted model that failed to load is tried again after this long
RETRY_AFTER = "1"  # seconds, on every 503 of the admission control


class HistoryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[StrictStr | StrictInt] = Field(max_length=MAX_HISTORY)  # original item ids, oldest first
    k: StrictInt | None = None


class Overloaded(Exception):
    """Shed load: the answer is a 503 with Retry-After."""


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
        self.shed = Counter("slmrec_shed", "queries not answered by the model: queue_full | deadline | "
                            "disconnected | log_unavailable", ["reason"], registry=r)
        self.queue_depth = Gauge("slmrec_queue_depth", "queries waiting for a forward pass", registry=r)
        self.reloads = Counter("slmrec_model_reloads", "hot reloads of the promoted model: ok | failed | refused "
                               "(loaded but failed the canary)", ["result"], registry=r)
        self.model_info = Gauge("slmrec_model_info", "the served model (value 1)", ["content_hash"], registry=r)
        self.history_refreshes = Counter("slmrec_history_refreshes", "re-reads of the DuckDB histories", registry=r)
        self.task_up = Gauge("slmrec_task_up", "background task running (1) or restarting (0)", ["task"], registry=r)
        self.task_restarts = Gauge("slmrec_task_restarts", "restarts of a background task after an error", ["task"],
                                   registry=r)
        self.ready = Gauge("slmrec_ready", "1 when /ready answers 200", registry=r)
        log = "answer log: "
        self.log_gauges = {
            "queue_depth": Gauge("slmrec_answer_log_queue_depth", log + "rows waiting for the disk", registry=r),
            "rows_spooled": Gauge("slmrec_answer_log_rows_spooled", log + "rows fsynced (one per 2xx)", registry=r),
            "rows_written": Gauge("slmrec_answer_log_rows_written", log + "rows in Parquet files", registry=r),
            "rows_quarantined": Gauge("slmrec_answer_log_rows_quarantined", log + "rows that could not be "
                                      "serialised (quarantine/*.jsonl)", registry=r),
            "rows_refused": Gauge("slmrec_answer_log_rows_refused", log + "rows that could not be made durable "
                                  "(their requests got 503: rows lost = 0)", registry=r),
            "write_errors": Gauge("slmrec_answer_log_write_errors", log + "failed writes", registry=r),
            "recovered_rows": Gauge("slmrec_answer_log_recovered_rows", log + "rows replayed from an earlier "
                                    "process's spool at start", registry=r),
            "torn_rows": Gauge("slmrec_answer_log_torn_rows", log + "torn spool lines discarded at start "
                               "(interrupted writes: never answered)", registry=r),
        }


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


class BodyLimitMiddleware:
    """413 for a request body over `limit` bytes: a declared Content-Length is refused before reading, a
    chunked body as soon as it passes the limit. A body within the limit is handed on unchanged."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._too_large(send, f"{int(declared) if declared.isdigit() else declared!r} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._too_large(send, f"more than {self.limit} bytes")
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()  # then: the server's disconnect events

        await self.app(scope, replayed, send)

    async def _too_large(self, send, size: str) -> None:
        body = json.dumps({"error": f"request body too large: {size}, the limit is {self.limit} bytes "
                                    "(serve.max_body_bytes)", "request_id": uuid.uuid4().hex}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


@dataclass
class ServerState:
    rec: Recommender  # swapped by hot reload with one assignment
    cfg: ServeConfig
    log_dir: Path
    promoted: Path | None = None  # the promotion record to follow (None: the model is pinned)
    root: Path = Path(".")
    loader: Callable[[Path], Recommender] | None = None  # model dir -> Recommender (same maps/options)
    metrics: Metrics = field(default_factory=Metrics)
    promoted_hash: str | None = None  # the content hash the record names (None: not read / pinned)
    promotion_error: str | None = None  # the record could not be read (the last poll)
    last_reload_error: str | None = None
    failed_reload: tuple[str, float] | None = None  # (content hash, monotonic time) of the last failed load
    reloads: list[dict] = field(default_factory=list)  # {"from", "to", "at"} of every swap
    last_poll: float = field(default_factory=time.monotonic)
    supervisor: Supervisor = field(default_factory=Supervisor)
    log: AnswerLog | None = None

    def not_ready(self) -> list[str]:
        """Why serving cannot be trusted now (empty: ready)."""
        reasons = []
        if self.promoted is not None:
            if self.promotion_error:
                reasons.append(f"promotion record unreadable: {self.promotion_error}")
            elif self.promoted_hash is not None and self.promoted_hash != self.rec.model_hash:
                why = f" ({self.last_reload_error})" if self.last_reload_error else " (loading)"
                reasons.append(f"serving {self.rec.model_hash[:12]}, promoted {self.promoted_hash[:12]} not loaded{why}")
            stale = max(10 * self.cfg.reload_poll_seconds, 300.0)
            if time.monotonic() - self.last_poll > stale:
                reasons.append(f"the promotion watcher has not completed a poll for {stale:.0f} s")
        for task in self.supervisor.tasks.values():
            if not task.up:
                reasons.append(f"task {task.name} {task.state} after {task.restarts} restart(s): {task.last_error}")
        if self.log is None:
            reasons.append("answer log not open")
        elif (problem := self.log.health()) is not None:
            reasons.append(f"answer log: {problem}")
        return reasons


class MicroBatcher:
    """Collect queued queries into batches (max_batch, max_wait_ms) and answer each with one call."""

    def __init__(self, state: ServerState, pool: ThreadPoolExecutor):
        self.state, self.pool = state, pool
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=max(1, int(state.cfg.max_queue)))
        self.max_batch = max(1, int(state.cfg.max_batch))
        self.max_wait = max(0.0, float(state.cfg.max_wait_ms)) / 1000.0
        self.pass_s = 0.0  # moving average of one forward pass (s): what a query ahead in the queue costs

    def submit(self, query: Query, deadline: float) -> asyncio.Future:
        """Queue a query; the future gets (result, Recommender). Raises Overloaded when the queue is full, or
        when the batches ahead of it would take it past its deadline (work it could never deliver in time)."""
        loop = asyncio.get_running_loop()
        batches_ahead = self.queue.qsize() // self.max_batch + 1
        if self.pass_s and loop.time() + batches_ahead * self.pass_s > deadline:
            raise Overloaded(f"{self.queue.qsize()} queries ahead, ~{1000 * batches_ahead * self.pass_s:.0f} ms "
                             "of forward passes: past the deadline (serve.timeout_ms)")
        future = loop.create_future()
        try:
            self.queue.put_nowait((query, future, deadline))
        except asyncio.QueueFull:
            raise Overloaded(f"queue full ({self.queue.maxsize} queries waiting, serve.max_queue)") from None
        return future

    async def _take(self) -> list:
        """The next batch of live queries: a query whose client gave up (future done) or whose deadline
        passed is dropped here, before any work is spent on it."""
        loop = asyncio.get_running_loop()
        batch = []
        while not batch:
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
            now, live = loop.time(), []
            for entry in batch:  # drop what its client gave up on, and what cannot finish by its deadline
                if entry[1].done():
                    continue
                if entry[2] < now + self.pass_s:
                    entry[1].set_exception(Overloaded("no answer possible within serve.timeout_ms"))
                    continue
                live.append(entry)
            batch = live
        return batch

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._take()
            rec = self.state.rec  # this batch finishes on this model even if a reload swaps it meanwhile
            self.state.metrics.batch_size.observe(len(batch))
            queries = [q for q, _, _ in batch]
            t0 = loop.time()
            try:
                results = await loop.run_in_executor(self.pool, rec.answer, queries)
            except Exception:  # noqa: BLE001 - answered one by one below: a bad query fails alone
                results = [await loop.run_in_executor(self.pool, _answer_one, rec, q) for q in queries]
            took = loop.time() - t0
            self.pass_s = took if not self.pass_s else 0.7 * self.pass_s + 0.3 * took
            for (_, future, _), result in zip(batch, results):
                if future.done():  # the client went away or its deadline passed meanwhile
                    continue
                if isinstance(result, BaseException) and not isinstance(result, (UnknownUser, EmptyHistory)):
                    future.set_exception(result)
                else:
                    future.set_result((result, rec))


def _answer_one(rec: Recommender, query: Query):
    try:
        return rec.answer([query])[0]
    except Exception as err:  # noqa: BLE001 - handed to this query's future alone (its request answers 500)
        return err


def _error(status: int, message: str, request_id: str | None = None, headers: dict | None = None,
           **extra) -> JSONResponse:
    body = {"error": message, "request_id": request_id, **extra}
    headers = {**({"X-Request-ID": request_id} if request_id else {}), **(headers or {})}
    return JSONResponse(body, status_code=status, headers=headers or None)


def _clean_errors(errors) -> list[dict]:
    """pydantic error dicts without unserialisable context objects (and without echoing huge inputs)."""
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg"))[:200], "type": e.get("type")} for e in errors]


async def reload_if_promoted(state: ServerState, pool: ThreadPoolExecutor) -> bool:
    """Load the model the promotion record names if it is not the one served; True when swapped.

    A record that cannot be read (missing, not JSON, not an object, a null path, a path outside
    serve.models_dir, a permission error) is reported in /ready, never raised."""
    try:
        model_dir, record = read_promoted(state.promoted, state.root, state.root / state.cfg.models_dir)
    except (OSError, ValueError) as err:  # ValueError covers malformed JSON and shapes; OSError permissions
        state.promotion_error = f"{type(err).__name__}: {err}"
        return False
    state.promotion_error, state.promoted_hash = None, record["content_hash"]
    if record["content_hash"] == state.rec.model_hash:
        return False
    failed = state.failed_reload
    if failed and failed[0] == record["content_hash"] and time.monotonic() - failed[1] < RELOAD_RETRY_SECONDS:
        return False  # the same broken candidate: retry later, not on every poll
    loop = asyncio.get_running_loop()
    result = "failed"
    try:
        new = await loop.run_in_executor(pool, state.loader, model_dir)
        if new.model_hash != record["content_hash"]:
            raise ValueError(f"{state.promoted} records {record['content_hash'][:12]}…, {model_dir.name} hashes to "
                             f"{new.model_hash[:12]}…")
        problem = await loop.run_in_executor(pool, canary, new, state.cfg.k)
        if problem is not None:
            result = "refused"
            raise ValueError(problem)
    except Exception as err:  # noqa: BLE001 - a broken candidate must not take the service down: reported
        state.last_reload_error = f"reload of {model_dir.name} {result}: {type(err).__name__}: {err}"
        state.failed_reload = (record["content_hash"], time.monotonic())
        state.metrics.reloads.labels(result).inc()
        print(f"slmrec serve: {state.last_reload_error}; still serving {state.rec.model_hash[:12]}", file=sys.stderr,
              flush=True)
        return False
    old = state.rec
    state.rec = new  # the swap: one assignment; running batches hold their own reference to `old`
    state.metrics.model_info.labels(old.model_hash).set(0)
    state.metrics.model_info.labels(new.model_hash).set(1)
    state.metrics.reloads.labels("ok").inc()
    state.last_reload_error, state.failed_reload = None, None
    state.reloads.append({"from": old.model_hash, "to": new.model_hash, "at": time.time()})
    print(f"slmrec serve: now serving {new.model_hash[:12]} ({model_dir})", file=sys.stderr, flush=True)
    return True


async def _watch(state: ServerState, pool: ThreadPoolExecutor) -> None:
    """The watcher: promotion record and history store, every reload_poll_seconds (supervised)."""
    loop = asyncio.get_running_loop()
    while True:
        if state.promoted is not None and state.loader is not None:
            await reload_if_promoted(state, pool)
        rec = state.rec
        try:
            if await loop.run_in_executor(pool, rec.history.refresh_if_changed):
                state.metrics.history_refreshes.inc()
        except Exception as err:  # noqa: BLE001 - keep the last good histories; say why
            print(f"slmrec serve: history refresh failed ({type(err).__name__}: {err}); keeping the last snapshot",
                  file=sys.stderr, flush=True)
        state.last_poll = time.monotonic()
        await asyncio.sleep(state.cfg.reload_poll_seconds)


async def _wait_disconnect(request: Request) -> None:
    """Returns when the client disconnects (or the server finished the response)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(state: ServerState) -> FastAPI:
    cfg, metrics = state.cfg, state.metrics
    infer_pool = ThreadPoolExecutor(1, thread_name_prefix="infer")  # one forward pass at a time
    load_pool = ThreadPoolExecutor(1, thread_name_prefix="reload")  # reloads/refreshes never block inference
    batcher = MicroBatcher(state, infer_pool)
    metrics.model_info.labels(state.rec.model_hash).set(1)
    timeout = cfg.timeout_ms / 1000.0

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.log = AnswerLog(state.log_dir, cfg.log_flush_rows, cfg.log_flush_seconds, cfg.log_max_queue)
        state.supervisor.start("batcher", batcher.run)
        state.supervisor.start("watcher", lambda: _watch(state, load_pool))
        try:
            yield
        finally:  # uvicorn has let in-flight requests finish: nothing is waiting on the batcher
            await state.supervisor.stop()
            state.log.close()  # every queued row durable, the spool converted to Parquet
            infer_pool.shutdown(wait=True)
            load_pool.shutdown(wait=True)
            print(f"slmrec serve: answer log closed ({state.log.rows_spooled} rows this run, "
                  f"{state.log.files_written} Parquet files under {state.log_dir})", file=sys.stderr, flush=True)

    app = FastAPI(title="SLMRec recommendations", lifespan=lifespan, redirect_slashes=False)  # a 404, not a 307
    app.state.server = state

    app.add_middleware(BodyLimitMiddleware, limit=cfg.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = _clean_errors(exc.errors())
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5])
        return _error(422, f"invalid request: {message}"[:1000], uuid.uuid4().hex, detail=errors[:20])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):  # unknown route, wrong method
        return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path[:200]}", uuid.uuid4().hex)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        print(f"slmrec serve: unexpected {type(exc).__name__} on {request.url.path[:200]}: {exc}", file=sys.stderr,
              flush=True)
        return _error(500, f"internal error: {type(exc).__name__}", uuid.uuid4().hex)

    def check(k: int | None, ids: list[str], request_id: str) -> JSONResponse | int:
        k = cfg.k if k is None else k
        if not 1 <= k <= cfg.max_k:
            return _error(422, f"k must be in 1..{cfg.max_k} (serve.max_k), got {k}", request_id)
        long = next((i for i in ids if len(i) > cfg.max_item_id_chars), None)
        if long is not None:
            return _error(422, f"an id of {len(long)} characters: at most {cfg.max_item_id_chars} "
                               "(serve.max_item_id_chars)", request_id)
        return k

    def shed(reason: str, message: str, request_id: str) -> JSONResponse:
        metrics.shed.labels(reason).inc()
        return _error(503, message, request_id, headers={"Retry-After": RETRY_AFTER})

    async def serve(query: Query, request: Request, request_id: str, t0: float) -> JSONResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout - (time.perf_counter() - t0)
        try:
            future = batcher.submit(query, deadline)
        except Overloaded as err:
            return shed("queue_full", f"overloaded: {err}", request_id)
        metrics.queue_depth.set(batcher.queue.qsize())
        gone = asyncio.ensure_future(_wait_disconnect(request))
        try:
            done, _ = await asyncio.wait({future, gone}, timeout=max(0.0, deadline - loop.time()),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if future not in done:
            future.cancel()  # the batcher skips it (or drops its result)
            if gone in done:
                metrics.shed.labels("disconnected").inc()
                return _error(499, "client disconnected", request_id)  # never delivered
            return shed("deadline", f"no answer within {cfg.timeout_ms:.0f} ms (serve.timeout_ms)", request_id)
        try:
            result, rec = future.result()  # an unexpected error of this query alone raises here -> 500
        except Overloaded as err:
            return shed("deadline", f"overloaded: {err}", request_id)
        if isinstance(result, UnknownUser):
            return _error(404, str(result), request_id, user_id=result.user_id)
        if isinstance(result, EmptyHistory):
            status = 404 if query.user_id is not None else 422
            return _error(status, str(result), request_id, user_id=result.user_id,
                          ignored_items=result.ignored[: cfg.echo_unknown], ignored_count=len(result.ignored))
        if gone.done() and not gone.cancelled():
            metrics.shed.labels("disconnected").inc()
            return _error(499, "client disconnected", request_id)  # not logged: nobody received it
        latency_ms = 1000.0 * (time.perf_counter() - t0)
        try:  # durable before the answer leaves: log rows == 2xx answers, whatever kills the process later
            await asyncio.wait_for(asyncio.wrap_future(state.log.append(log_row(request_id, result, latency_ms))),
                                   cfg.log_timeout_ms / 1000.0)
        except (LogUnavailable, asyncio.TimeoutError) as err:
            return shed("log_unavailable", f"answer log unavailable: {err or 'timeout'}", request_id)
        metrics.answers.labels(result.fallback or "none").inc()
        body = {"user_id": result.user_id, "items": result.items, "scores": result.scores, "model": result.model,
                "fallback": result.fallback, "ignored_items": result.ignored_items[: cfg.echo_unknown],
                "ignored_count": len(result.ignored_items), "request_id": request_id}
        return JSONResponse(body, headers={"X-Request-ID": request_id})

    @app.get("/recommend/{user_id}")
    async def recommend_user(user_id: str, request: Request, k: int | None = None):
        t0, request_id = time.perf_counter(), uuid.uuid4().hex
        k = check(k, [user_id], request_id)
        if isinstance(k, JSONResponse):
            return k
        return await serve(Query(k=k, user_id=user_id), request, request_id, t0)

    @app.post("/recommend")
    async def recommend_history(body: HistoryRequest, request: Request):
        t0, request_id = time.perf_counter(), uuid.uuid4().hex
        items = [str(i) for i in body.items]
        k = check(body.k, items, request_id)
        if isinstance(k, JSONResponse):
            return k
        return await serve(Query(k=k, items=items), request, request_id, t0)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        reasons = state.not_ready()
        metrics.ready.set(0 if reasons else 1)
        body = {"ready": not reasons, "model": state.rec.model_hash, "promoted": state.promoted_hash,
                "reasons": reasons, "last_reload_error": state.last_reload_error}
        return JSONResponse(body, status_code=503 if reasons else 200)

    @app.get("/model")
    async def model():
        return {**state.rec.describe(), "reloads": state.reloads, "following": state.promoted is not None}

    @app.get("/metrics")
    async def prometheus():
        metrics.queue_depth.set(batcher.queue.qsize())
        metrics.ready.set(0 if state.not_ready() else 1)
        for task in state.supervisor.tasks.values():
            metrics.task_up.labels(task.name).set(1 if task.up else 0)
            metrics.task_restarts.labels(task.name).set(task.restarts)
        if state.log is not None:
            for name, gauge in metrics.log_gauges.items():
                gauge.set(getattr(state.log, name))
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
