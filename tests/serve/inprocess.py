"""An in-process uvicorn server (a thread) around `create_app`, and a scriptable fake Recommender.

    with InProcessServer(state) as srv:      # lifespan runs: answer log open, batcher + watcher supervised
        httpx.get(srv.url + "/ready")

Cheaper than a server process (no torch import, no model load) for the admission-control tests,
which need a model whose speed and failures they choose.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from slmrec.config import ServeConfig
from slmrec.serve.app import ServerState, create_app
from slmrec.serve.recommender import Answer, EmptyHistory, Query, UnknownUser

from serve_helpers import free_port


class _History:
    n_users = 3

    def refresh_if_changed(self) -> bool:
        return False

    def user_ids(self) -> list[str]:
        return ["a", "b", "c"]

    def get(self, user: str):
        return ["i1", "i2"] if user in self.user_ids() else None


@dataclass
class FakeRecommender:
    """Answers "i3".."i12" after `delay` seconds a batch; a query for user "boom" raises inside a batch."""

    delay: float = 0.0
    model_hash: str = "f" * 64
    history: _History = field(default_factory=_History)
    calls: list[int] = field(default_factory=list)  # batch sizes

    def answer(self, queries: list[Query]):
        self.calls.append(len(queries))
        time.sleep(self.delay)
        if any(q.user_id == "boom" for q in queries):
            raise RuntimeError("a query that breaks the model")
        out = []
        for q in queries:
            if q.user_id is not None and self.history.get(q.user_id) is None:
                out.append(UnknownUser(q.user_id))
                continue
            items = self.history.get(q.user_id) if q.user_id is not None else q.items
            unknown = [i for i in items if not i.startswith("i")]
            if len(unknown) == len(items):
                out.append(EmptyHistory(q.user_id or "anonymous", unknown))
                continue
            recs = [f"i{n}" for n in range(3, 3 + q.k)]
            out.append(Answer(q.user_id or "anonymous", recs, [1.0 / n for n in range(1, q.k + 1)], self.model_hash,
                              None, unknown, len(items), q.k))
        return out

    def describe(self) -> dict:
        return {"content_hash": self.model_hash}


class InProcessServer:
    def __init__(self, state: ServerState):
        self.state = state
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(state), host="127.0.0.1", port=self.port, log_level="warning",
                                limit_concurrency=state.cfg.max_concurrency, timeout_graceful_shutdown=10)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "InProcessServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "in-process server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def fake_state(tmp_path: Path, rec=None, **cfg) -> ServerState:
    cfg = ServeConfig(**{"max_wait_ms": 2.0, "reload_poll_seconds": 0.2, "log_flush_seconds": 0.2, **cfg})
    return ServerState(rec=rec or FakeRecommender(), cfg=cfg, log_dir=tmp_path / "log")
