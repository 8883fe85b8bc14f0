"""Background tasks of the server that restart on error, with backoff, and say how they are doing.

    sup = Supervisor()
    sup.start("watcher", lambda: watch(state))      # a coroutine factory: called again after each crash
    sup.tasks["watcher"].up                           # False while it waits to restart (shown by /ready)
    await sup.stop()

A task that returns is finished (state "stopped"); one that raises is logged to stderr, counted in
`restarts` and started again after 0.5 s, 1 s, 2 s, ... up to `max_backoff` seconds. A task that ran
for `healthy_after` seconds since its last start resets the backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass
from typing import Awaitable, Callable


@dataclass
class TaskState:
    name: str
    state: str = "starting"  # running | backoff | stopped
    restarts: int = 0
    last_error: str | None = None
    started_at: float = 0.0

    @property
    def up(self) -> bool:
        return self.state == "running"


class Supervisor:
    def __init__(self, min_backoff: float = 0.5, max_backoff: float = 30.0, healthy_after: float = 60.0):
        self.min_backoff, self.max_backoff, self.healthy_after = min_backoff, max_backoff, healthy_after
        self.tasks: dict[str, TaskState] = {}
        self._handles: list[asyncio.Task] = []

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> TaskState:
        state = self.tasks[name] = TaskState(name)
        self._handles.append(asyncio.create_task(self._run(state, factory), name=name))
        return state

    async def _run(self, state: TaskState, factory: Callable[[], Awaitable[None]]) -> None:
        backoff = self.min_backoff
        while True:
            state.state, state.started_at = "running", time.monotonic()
            try:
                await factory()
                state.state = "stopped"
                return
            except asyncio.CancelledError:
                state.state = "stopped"
                raise
            except Exception as err:  # noqa: BLE001 - the point of a supervisor: counted, shown, restarted
                if time.monotonic() - state.started_at >= self.healthy_after:
                    backoff = self.min_backoff
                state.state, state.restarts = "backoff", state.restarts + 1
                state.last_error = f"{type(err).__name__}: {err}"
                print(f"slmrec serve: task {state.name} failed ({state.last_error}); restart {state.restarts} "
                      f"in {backoff:.1f} s", file=sys.stderr, flush=True)
                await asyncio.sleep(backoff)
                backoff = min(self.max_backoff, backoff * 2)

    async def stop(self) -> None:
        for handle in self._handles:
            handle.cancel()
        for handle in self._handles:
            with contextlib.suppress(asyncio.CancelledError):
                await handle
