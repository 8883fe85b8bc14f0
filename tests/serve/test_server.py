"""`slmrec serve` as a real process on a free localhost port: answers, errors, batching, hot reload, log.

One server per module, following a promotion record (no --model). The tests run in file order and
every 2xx /recommend answer is recorded, so the last test can check the answer log row by row
after a SIGTERM: one row per 2xx answer, with the model that produced it.
"""

import asyncio
import json
import threading
import time

import duckdb
import httpx
import pyarrow.parquet as pq
import pytest

from slmrec import cli
from slmrec.data.sequences import load_splits
from slmrec.serve.recommender import load_serving_model

from serve_helpers import ServerProcess, card_hash, promote
from test_recommender import evaluator_top_k

K = 10


class Answers:
    """Every 2xx /recommend answer seen by the tests: request id -> model hash."""

    def __init__(self):
        self.models: dict[str, str] = {}
        self.lock = threading.Lock()

    def record(self, response: httpx.Response) -> httpx.Response:
        if response.status_code // 100 == 2 and response.request.url.path.startswith("/recommend"):
            body = response.json()
            with self.lock:
                self.models[body["request_id"]] = body["model"]
        return response


@pytest.fixture(scope="module")
def server(pipeline, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    record = tmp / "promoted.json"
    promote(record, pipeline / "models" / "student")
    (tmp / "params.yaml").write_text(
        f"promotion: {{record: {record}}}\n"
        "serve: {max_wait_ms: 20.0, max_batch: 32, reload_poll_seconds: 0.3, log_flush_rows: 7, log_flush_seconds: 0.5,\n"
        f"        models_dir: {pipeline / 'models'}, max_body_bytes: 100000}}\n"
    )
    srv = ServerProcess(["--params", str(tmp / "params.yaml"), "--log", str(tmp / "log")], cwd=tmp, out=tmp / "server.out")
    srv.record, srv.log_dir, srv.answers = record, tmp / "log", Answers()
    srv.client = httpx.Client(base_url=srv.url, timeout=60.0)
    yield srv
    srv.client.close()
    srv.stop()


def get(server, path: str) -> httpx.Response:
    return server.answers.record(server.client.get(path))


def post(server, body=None, content: str | None = None) -> httpx.Response:
    if content is not None:
        response = server.client.post("/recommend", content=content, headers={"content-type": "application/json"})
    else:
        response = server.client.post("/recommend", json=body)
    return server.answers.record(response)


def test_same_top_k_from_evaluator_batch_job_and_http(pipeline, server, tmp_path):
    splits = load_splits(pipeline / "splits")
    model = load_serving_model(pipeline / "models/student/model.pt")
    users = [f"u{n}" for n in (0, 3, 17, 38)]
    users_file = tmp_path / "users.txt"
    users_file.write_text("\n".join(users) + "\n")
    out = tmp_path / "batch.parquet"
    assert cli.main(["recommend", "--model", str(pipeline / "models/student"), "--k", str(K), "--out", str(out),
                     "--users", str(users_file), "--partition", "test", "--params", str(tmp_path / "none.yaml")]) == 0
    batch = pq.read_table(out).to_pandas()
    for user in users:
        history, target = splits.test[splits.user_ids.index(user)]
        evaluator = [splits.item_ids[i] for i in evaluator_top_k(model, history + [target], K)]
        http = get(server, f"/recommend/{user}?k={K}")
        assert http.status_code == 200, http.text
        job = batch[batch.user_id == user].sort_values("rank")
        assert http.json()["items"] == evaluator == job["item_id"].tolist(), user
        assert http.json()["scores"] == pytest.approx(job["score"].tolist(), abs=1e-6)  # float32, other batch size
        # the same history posted by a caller (test history, without the target)
        posted = post(server, {"items": [splits.item_ids[i] for i in history], "k": K})
        assert posted.json()["items"] == [splits.item_ids[i] for i in evaluator_top_k(model, history, K)]
        assert posted.json()["user_id"] == "anonymous"
    body = http.json()
    assert set(body) == {"user_id", "items", "scores", "model", "fallback", "ignored_items", "ignored_count",
                         "request_id"}
    assert body["model"] == card_hash(pipeline / "models/student") and body["fallback"] is None


@pytest.mark.parametrize(
    "path, status, needle",
    [
        ("/recommend/nobody", 404, "nobody"),
        ("/recommend/u1?k=0", 422, "k must be in 1..100"),
        ("/recommend/u1?k=101", 422, "k must be in 1..100"),
        ("/recommend/u1?k=ten", 422, "query.k"),
        ("/recommend/u1/extra", 404, "Not Found: GET /recommend/u1/extra"),
        ("/recommend", 405, "Method Not Allowed"),
    ],
)
def test_invalid_gets(server, path, status, needle):
    response = get(server, path)
    assert response.status_code == status and needle in response.json()["error"], response.text
    assert response.json()["request_id"]


@pytest.mark.parametrize(
    "body, content, needle",
    [
        (None, "{not json", "JSON decode error"),
        (None, "[1, 2]", "valid dictionary"),
        ({"items": "m1"}, None, "valid list"),
        ({"items": [1.5, True]}, None, "body.items.0"),
        ({"items": [["m1"]]}, None, "body.items.0"),
        ({"items": ["m1"], "k": 0}, None, "k must be in 1..100"),
        ({"items": ["m1"], "k": "5"}, None, "body.k"),
        ({"items": ["m1"], "user": "u1"}, None, "Extra inputs"),
        ({"k": 3}, None, "body.items"),
        ({"items": []}, None, "no item the model knows"),
        ({"items": ["nope", "zilch"]}, None, "2 unknown item(s)"),
        ({"items": ["m1"] * 10_001}, None, "body.items"),
    ],
)
def test_invalid_posts(server, body, content, needle):
    response = post(server, body, content)
    assert response.status_code == 422 and needle in response.json()["error"], response.text


def test_unknown_items_are_ignored_and_listed(server):
    response = post(server, {"items": ["m1", "zz-new", 7, "m2"], "k": 5})
    assert response.status_code == 200
    body = response.json()
    assert body["ignored_items"] == ["zz-new", "7"] and body["ignored_count"] == 2 and len(body["items"]) == 5
    assert not {"m1", "m2"} & set(body["items"])


def test_health_ready_model_metrics(pipeline, server):
    assert server.client.get("/health").json() == {"status": "ok"}
    ready = server.client.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["reasons"] == []
    assert ready.json()["model"] == ready.json()["promoted"] == card_hash(pipeline / "models/student")
    model = server.client.get("/model").json()
    assert model["content_hash"] == ready.json()["model"] and model["artifact"] == "student"
    assert {"teacher", "splits", "sasrec"} <= {p["artifact"] for p in model["parents"]}
    assert "valid_best" in model["metrics"]
    # least exposure: no file system path and no training params leave the process
    assert "params" not in model and str(pipeline) not in json.dumps(model) and "/" not in model["name"]
    metrics = server.client.get("/metrics").text
    for needle in ('slmrec_requests_total{endpoint="/recommend/{user_id}",method="GET",status="200"}',
                   'slmrec_request_errors_total{endpoint="/recommend",status="422"}',
                   "slmrec_request_latency_seconds_bucket", "slmrec_batch_size_count"):
        assert needle in metrics, needle


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_concurrent_requests_share_forward_passes(server):
    before = server.client.get("/metrics").text

    async def burst():
        async with httpx.AsyncClient(base_url=server.url, timeout=60.0) as client:
            return await asyncio.gather(*(client.get(f"/recommend/u{n % 40}?k=5") for n in range(32)))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 32
    for r in responses:
        server.answers.record(r)
    after = server.client.get("/metrics").text
    queries = _metric(after, "slmrec_batch_size_sum") - _metric(before, "slmrec_batch_size_sum")
    passes = _metric(after, "slmrec_batch_size_count") - _metric(before, "slmrec_batch_size_count")
    assert queries == 32 and passes < 32, (queries, passes)  # some forward passes answered several requests


def test_a_broken_promotion_keeps_the_old_model_serving(pipeline, server, tmp_path):
    student = card_hash(pipeline / "models/student")
    server.record.write_text(json.dumps({"path": str(pipeline / "models" / "gone"), "content_hash": "f" * 64}))
    deadline = time.monotonic() + 60
    while not (ready := server.client.get("/ready")).json()["last_reload_error"]:
        assert time.monotonic() < deadline, "the broken promotion was never reported"
        time.sleep(0.2)
    assert ready.status_code == 503  # served != promoted: not to be trusted, though it keeps answering
    assert ready.json()["model"] == student and "gone" in ready.json()["last_reload_error"]
    assert "promoted ffffffffffff not loaded" in ready.json()["reasons"][0]
    assert get(server, "/recommend/u2?k=3").json()["model"] == student
    assert 'slmrec_model_reloads_total{result="failed"} 1.0' in server.client.get("/metrics").text


def wait_ready(server, predicate, what: str, timeout: float = 60.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while not predicate(ready := server.client.get("/ready")):
        assert time.monotonic() < deadline, f"/ready never showed {what}: {ready.text}"
        time.sleep(0.1)
    return ready


@pytest.mark.parametrize("record, needle", [
    ({"path": None, "content_hash": "f" * 64}, "'path' must be a non-empty string"),
    (["models/student"], "JSON object, got list"),
    ("{not json", "not JSON"),
    ({"path": "/etc", "content_hash": "f" * 64}, "outside the models directory"),
    ({"path": "../../../../etc", "content_hash": "f" * 64}, "outside the models directory"),
])
def test_a_malformed_record_is_reported_and_the_watcher_survives(pipeline, server, record, needle):
    student = pipeline / "models" / "student"
    server.record.write_text(record if isinstance(record, str) else json.dumps(record))
    ready = wait_ready(server, lambda r: r.status_code == 503 and needle in " ".join(r.json()["reasons"]), needle)
    assert "promotion record unreadable" in ready.json()["reasons"][0]
    assert get(server, "/recommend/u2?k=3").status_code == 200  # still answering with the model it has
    promote(server.record, student)  # the watcher is alive: a good record makes the server ready again
    wait_ready(server, lambda r: r.status_code == 200, "ready again")
    assert 'slmrec_task_restarts{task="watcher"} 0.0' in server.client.get("/metrics").text


def test_hot_reload_then_sigterm_flushes_the_log(pipeline, server):
    student, teacher = card_hash(pipeline / "models/student"), card_hash(pipeline / "models/teacher")
    stop, failures = threading.Event(), []

    def traffic():  # requests keep flowing while the new model loads and is swapped in
        with httpx.Client(base_url=server.url, timeout=60.0) as client:
            while not stop.is_set():
                r = server.answers.record(client.get("/recommend/u4?k=3"))
                if r.status_code != 200:
                    failures.append(r.text)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        promote(server.record, pipeline / "models" / "teacher")
        deadline = time.monotonic() + 120
        while server.client.get("/ready").json()["model"] != teacher:
            assert time.monotonic() < deadline, "the promoted teacher was not picked up"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join()
    assert not failures
    after = get(server, "/recommend/u4?k=3").json()
    assert after["model"] == teacher
    reloads = server.client.get("/model").json()["reloads"]
    assert [(r["from"], r["to"]) for r in reloads] == [(student, teacher)]

    # SIGTERM: graceful shutdown (uvicorn re-raises the signal once done, hence exit status -15)
    assert server.stop() in (0, -15)
    out = server.out.read_text()
    assert "answer log closed" in out and "Application shutdown complete" in out, out
    assert not list(server.log_dir.rglob("*.tmp"))
    rows = duckdb.sql(f"SELECT * FROM read_parquet('{server.log_dir}/**/*.parquet')").df()
    assert len(rows) == len(server.answers.models)  # one row per 2xx answer, nothing lost, nothing extra
    assert dict(zip(rows.request_id, rows.model)) == server.answers.models  # and the model that answered it
    assert set(rows.model) == {student, teacher}
    assert list(rows.columns) == ["request_id", "time", "user_id", "history_len", "unknown_count", "unknown_items", "k",
                                  "items", "scores", "model", "latency_ms", "fallback"]
    assert set(rows.user_id) >= {"anonymous", "u4"} and (rows.latency_ms > 0).all()
    posted = rows[rows.unknown_items.map(len) > 0].iloc[0]
    assert list(posted.unknown_items) == ["zz-new", "7"] and posted.history_len == 4
