"""The server under overload, failures and hostile input (issue 18), in process: admission control, input
limits, supervision, the canary, the top-k rule, the compact history store, and a fuzz of the HTTP API."""

import asyncio
import json
import math
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import duckdb
import httpx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slmrec.config import SequenceConfig, ServeConfig
from slmrec.data.ingest import ingest
from slmrec.serve.app import ServerState, reload_if_promoted
from slmrec.serve.history import HistoryStore
from slmrec.serve.recommender import Recommender, canary, stable_top_k
from slmrec.serve.supervise import Supervisor, TaskState

from inprocess import FakeRecommender, InProcessServer, fake_state
from serve_helpers import DAY0, card_hash, promote


def log_rows(log_dir: Path):
    files = list(log_dir.rglob("*.parquet"))
    return duckdb.sql(f"SELECT * FROM read_parquet('{log_dir}/**/*.parquet')").df() if files else None


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


async def _burst(url: str, paths: list[str], timeout: float = 30.0):
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
        async def one(path):
            t0 = time.perf_counter()
            response = await client.get(path)
            return response, time.perf_counter() - t0

        return await asyncio.gather(*(one(p) for p in paths))


# ---------------------------------------------------------------- admission control


def test_overload_is_shed_with_503_within_the_deadline(tmp_path):
    rec = FakeRecommender(delay=0.3)
    state = fake_state(tmp_path, rec, max_queue=3, max_batch=1, timeout_ms=500.0)
    with InProcessServer(state) as srv:
        results = asyncio.run(_burst(srv.url, [f"/recommend/a?k=3&n={n}" for n in range(16)]))
        metrics = httpx.get(srv.url + "/metrics").text
    statuses = [r.status_code for r, _ in results]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 1, statuses
    shed = [r for r, _ in results if r.status_code == 503]
    assert any("queue full" in r.json()["error"] for r in shed)  # refused at once: the queue holds 3
    deadline = [r for r in shed if "queue full" not in r.json()["error"]]  # refused for its deadline
    assert deadline and all(re.search("past the deadline|no answer (possible )?within", r.json()["error"])
                            for r in deadline)
    assert all(r.headers["retry-after"] == "1" for r in shed)
    assert max(t for _, t in results) < 0.5 + 0.4  # every request answered by its deadline (+ slack)
    assert sum(rec.calls) < len(results)  # expired queries were dropped, not computed
    assert metric(metrics, 'slmrec_shed_total{reason="queue_full"}') >= 1
    rows = log_rows(state.log_dir)
    assert len(rows) == statuses.count(200)  # log rows == 2xx answers


def test_a_bad_query_fails_alone(tmp_path):
    rec = FakeRecommender()
    state = fake_state(tmp_path, rec, max_batch=8, max_wait_ms=100.0)
    with InProcessServer(state) as srv:
        results = asyncio.run(_burst(srv.url, ["/recommend/a", "/recommend/boom", "/recommend/b", "/recommend/c"]))
    assert rec.calls[0] > 1  # they shared a batch, which failed, and were answered one by one
    assert [r.status_code for r, _ in results] == [200, 500, 200, 200]
    assert results[1][0].json()["error"] == "internal error: RuntimeError"


def test_body_and_id_limits(tmp_path):
    state = fake_state(tmp_path, max_body_bytes=1000, max_item_id_chars=16)
    with InProcessServer(state) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
        big = json.dumps({"items": ["i1"] * 400})  # 2,4xx bytes
        response = client.post("/recommend", content=big, headers={"content-type": "application/json"})
        assert response.status_code == 413 and "limit is 1000 bytes" in response.json()["error"]

        def chunks():  # no Content-Length: refused as soon as the stream passes the limit
            for _ in range(100):
                yield b'{"items": [' + b'"i1",' * 50

        response = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 413 and "more than 1000 bytes" in response.json()["error"]
        assert client.post("/recommend", json={"items": ["i1", "x" * 17]}).status_code == 422
        assert "at most 16" in client.get("/recommend/" + "u" * 17).json()["error"]
        ok = client.post("/recommend", json={"items": ["i1", *[f"new{n}" for n in range(30)]], "k": 2}).json()
        assert ok["ignored_count"] == 30 and len(ok["ignored_items"]) == state.cfg.echo_unknown  # bounded echo
    rows = log_rows(state.log_dir)
    assert len(rows) == 1 and rows.unknown_count[0] == 30 and len(rows.unknown_items[0]) == 10


def test_a_client_that_left_is_not_logged(tmp_path):
    rec = FakeRecommender(delay=0.6)
    state = fake_state(tmp_path, rec, timeout_ms=5000.0)
    with InProcessServer(state) as srv:
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(srv.url + "/recommend/a", timeout=0.15)  # the client gives up while the model computes
        time.sleep(0.8)
        assert httpx.get(srv.url + "/recommend/b", timeout=10).status_code == 200
        metrics = httpx.get(srv.url + "/metrics").text
    assert metric(metrics, 'slmrec_shed_total{reason="disconnected"}') == 1
    assert list(log_rows(state.log_dir).user_id) == ["b"]


def test_metrics_show_tasks_and_the_answer_log(tmp_path):
    state = fake_state(tmp_path)
    with InProcessServer(state) as srv:
        assert httpx.get(srv.url + "/recommend/a").status_code == 200
        ready = httpx.get(srv.url + "/ready")
        metrics = httpx.get(srv.url + "/metrics").text
    assert ready.status_code == 200 and ready.json()["reasons"] == []
    for name in ('slmrec_task_up{task="batcher"} 1.0', 'slmrec_task_up{task="watcher"} 1.0',
                 'slmrec_task_restarts{task="batcher"} 0.0', "slmrec_answer_log_rows_spooled 1.0",
                 "slmrec_answer_log_queue_depth 0.0", "slmrec_answer_log_rows_refused 0.0",
                 "slmrec_answer_log_write_errors 0.0", "slmrec_ready 1.0"):
        assert name in metrics, name


# ---------------------------------------------------------------- supervision and safe reload


def test_a_crashing_task_is_restarted_with_backoff():
    async def main():
        sup, runs = Supervisor(min_backoff=0.01, max_backoff=0.04), []

        async def flaky():
            runs.append(time.monotonic())
            if len(runs) <= 3:
                raise OSError(f"failure {len(runs)}")
            await asyncio.sleep(10)

        task = sup.start("flaky", flaky)
        await asyncio.sleep(0.005)
        assert task.state == "backoff" and not task.up and "failure 1" in task.last_error
        while len(runs) < 4:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
        assert task.up and task.restarts == 3
        gaps = [b - a for a, b in zip(runs, runs[1:])]
        assert gaps[0] >= 0.01 and gaps[1] >= 0.02 and gaps[2] >= 0.04 - 0.005  # doubling, capped
        await sup.stop()
        assert task.state == "stopped"

    asyncio.run(main())


def test_ready_names_a_restarting_task(tmp_path):
    state = fake_state(tmp_path)
    state.supervisor.tasks["watcher"] = TaskState("watcher", state="backoff", restarts=2, last_error="OSError: x")
    assert any("task watcher backoff after 2 restart(s): OSError: x" in r for r in state.not_ready())


def test_a_permission_error_on_the_record_is_reported_not_raised(tmp_path, monkeypatch):
    record = tmp_path / "models" / "promoted.json"
    record.parent.mkdir()
    record.write_text("{}")
    state = fake_state(tmp_path)
    state.promoted, state.root, state.loader = record, tmp_path, lambda d: pytest.fail("nothing to load")
    real = Path.read_text

    def denied(self, *a, **k):
        if self == record:
            raise PermissionError(13, "Permission denied", str(record))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", denied)
    with ThreadPoolExecutor(1) as pool:
        assert asyncio.run(reload_if_promoted(state, pool)) is False
    assert "PermissionError" in state.promotion_error
    assert any("promotion record unreadable" in r for r in state.not_ready())


def _nan(rec: Recommender) -> Recommender:
    with torch.no_grad():
        for p in rec.model.parameters():
            p.fill_(float("nan"))
    return rec


def test_a_nan_model_fails_the_canary_and_is_not_swapped_in(pipeline, tmp_path):
    models = pipeline / "models"
    serving = Recommender.load(models / "sasrec")
    assert canary(serving, 10) is None and canary(_nan(Recommender.load(models / "student")), 10) is not None
    record = tmp_path / "promoted.json"
    promote(record, models / "student")
    state = ServerState(rec=serving, cfg=ServeConfig(models_dir=str(models)), log_dir=tmp_path / "log",
                        promoted=record, root=tmp_path, loader=lambda d: _nan(Recommender.load(d)))
    with ThreadPoolExecutor(1) as pool:
        assert asyncio.run(reload_if_promoted(state, pool)) is False
    assert state.rec is serving and "refused" in state.last_reload_error and "canary" in state.last_reload_error
    assert state.metrics.reloads.labels("refused")._value.get() == 1
    assert any(f"promoted {card_hash(models / 'student')[:12]} not loaded" in r for r in state.not_ready())


# ---------------------------------------------------------------- top-k and the history store


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, -math.inf]), min_size=6, max_size=6), min_size=1,
                max_size=4), st.integers(1, 6))
def test_stable_top_k_is_the_stable_sort(rows, k):
    scores = torch.tensor(rows)  # few distinct values: ties everywhere, -inf runs included
    idx, vals = stable_top_k(scores, k)
    ref_vals, ref_idx = torch.sort(scores, dim=1, descending=True, stable=True)
    assert torch.equal(idx, ref_idx[:, :k]) and torch.equal(vals, ref_vals[:, :k])


def test_history_refresh_is_incremental_and_equals_a_full_read(pipeline, tmp_path):
    db = tmp_path / "warehouse.duckdb"
    shutil.copy(pipeline / "warehouse.duckdb", db)
    store = HistoryStore(db, SequenceConfig())
    assert store._snap.codes.dtype.name == "int32" and store._snap.overlay == {}
    before = store.get("u7")
    # a late file: an event of u7 *earlier* than its others (lands first), a new user, a new item
    (tmp_path / "late.csv").write_text(f"user_id,item_id,ts\nu7,m9,{DAY0 - 86400}\nnewcomer,m4,{DAY0}\n"
                                       f"u7,brand-new,{DAY0 + 99 * 86400}\n")
    ingest("events", str(tmp_path / "late.csv"), str(db))
    assert store.refresh_if_changed() and store.incremental_reads == 1 and store.full_reads == 1
    assert store.get("u7") == ["m9", *before, "brand-new"] and store.get("newcomer") == ["m4"]
    fresh = HistoryStore(db, SequenceConfig())
    assert sorted(store.user_ids()) == sorted(fresh.user_ids()) and store.rows == fresh.rows
    assert all(store.get(u) == fresh.get(u) for u in fresh.user_ids())
    with duckdb.connect(str(db)) as con:  # a batch that vanished (a rebuilt store): a full read, not a merge
        con.execute("DELETE FROM raw_interactions WHERE user_id = 'newcomer'")
    assert store.refresh_if_changed() and store.full_reads == 2 and store.get("newcomer") is None


# ---------------------------------------------------------------- fuzz of the HTTP API (the real tiny model)

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
                    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20)
ITEM = st.one_of(st.sampled_from([f"m{n}" for n in range(1, 31)]), st.text(max_size=300), st.integers(),
                 st.floats(), st.booleans(), st.none(), JSON)
BODIES = st.one_of(
    JSON,
    st.fixed_dictionaries({"items": st.lists(ITEM, max_size=30)}, optional={"k": st.one_of(st.integers(), JSON)}),
    st.builds(lambda n, s: {"items": [s * n]}, st.integers(1, 5000), st.text(min_size=1, max_size=3)),
)


@pytest.fixture(scope="module")
def fuzz_server(pipeline, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    rec = Recommender.load(pipeline / "models" / "student")
    state = ServerState(rec=rec, cfg=ServeConfig(max_body_bytes=20_000, timeout_ms=5000.0), log_dir=tmp / "log")
    with InProcessServer(state) as srv, httpx.Client(base_url=srv.url, timeout=15.0) as client:
        srv.client = client
        yield srv


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(body=BODIES, user=st.text(max_size=200), k=st.one_of(st.none(), st.integers(-5, 200), st.text(max_size=5)))
def test_fuzz_never_500_never_hangs(fuzz_server, body, user, k):
    client = fuzz_server.client
    posted = client.post("/recommend", content=json.dumps(body), headers={"content-type": "application/json"})
    assert posted.status_code in (200, 404, 413, 422), posted.text
    params = {} if k is None else {"k": k}
    got = client.get("/recommend/" + quote(user, safe=""), params=params)
    assert got.status_code in (200, 404, 405, 422), got.text
    assert posted.json()["request_id"] and got.json()  # always JSON, never an HTML error page


def test_fuzz_server_still_answers(fuzz_server):
    client = fuzz_server.client
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/recommend/u3?k=5").status_code == 200
    assert client.get("/ready").status_code == 200
