"""The answer log: every served answer as one row, written as Parquet files by one writer thread.

    log = AnswerLog("results/serving", flush_rows=256, flush_seconds=2.0)
    log.append({...})        # non-blocking, any thread
    log.close()              # flushes everything queued, then stops the writer

Files: `DIR/YYYY-MM-DD/answers-<UTC time>-<pid>-<seq>.parquet` (the date of the rows' first answer;
no `key=value` folder names, so `read_parquet('DIR/**/*.parquet')` gives exactly the columns
below). Each file is written to a hidden temp name and renamed: a reader never sees half a file.

Columns (what the monitoring reads): request_id, time (UTC), user_id ("anonymous" for a posted
history), history_len, unknown_items, k, items, scores, model (content hash), latency_ms, fallback.

A failed write (disk full, ...) keeps its rows queued and is retried at the next flush;
`close()` raises if rows are still unwritten, so a lost row is never silent.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([
    ("request_id", pa.string()),
    ("time", pa.timestamp("us", tz="UTC")),
    ("user_id", pa.string()),
    ("history_len", pa.int32()),
    ("unknown_items", pa.list_(pa.string())),
    ("k", pa.int32()),
    ("items", pa.list_(pa.string())),
    ("scores", pa.list_(pa.float64())),
    ("model", pa.string()),
    ("latency_ms", pa.float64()),
    ("fallback", pa.string()),
])  # fmt: skip
_STOP = object()


class AnswerLog:
    def __init__(self, log_dir: str | Path, flush_rows: int = 256, flush_seconds: float = 2.0):
        if flush_rows < 1 or flush_seconds <= 0:
            raise ValueError(f"answer log: flush_rows must be >= 1 and flush_seconds > 0, got {flush_rows}, {flush_seconds}")
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._queue: queue.Queue = queue.Queue()
        self._pending: list[dict] = []
        self._seq = 0
        self.rows_written = 0
        self.files_written = 0
        self.write_errors = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="answer-log", daemon=True)
        self._thread.start()

    def append(self, row: dict) -> None:
        if self._closed:
            raise RuntimeError("answer log is closed")
        self._queue.put(row)

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, stop the writer. Raises if rows could not be written."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"answer log: writer did not finish within {timeout} s")
        if self._pending:
            raise RuntimeError(f"answer log: {len(self._pending)} row(s) could not be written to {self.dir}")

    # -- the writer thread

    def _run(self) -> None:
        first_pending = None
        while True:
            wait = None if first_pending is None else max(0.0, first_pending + self.flush_seconds - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is _STOP:
                while True:  # rows appended before close() are ahead of _STOP; anything else too
                    try:
                        extra = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if extra is not _STOP:
                        self._pending.append(extra)
                self._flush()
                return
            if item is not None:
                if first_pending is None:
                    first_pending = time.monotonic()
                self._pending.append(item)
            due = first_pending is not None and time.monotonic() - first_pending >= self.flush_seconds
            if len(self._pending) >= self.flush_rows or (due and self._pending):
                first_pending = None if self._flush() else time.monotonic()

    def _flush(self) -> bool:
        if not self._pending:
            return True
        rows = self._pending
        try:
            self._write(rows)
        except OSError as err:  # keep the rows for the next attempt; close() reports them if it never works
            self.write_errors += 1
            print(f"answer log: write failed ({err}); {len(rows)} row(s) kept for retry", file=sys.stderr, flush=True)
            return False
        self._pending = []
        self.rows_written += len(rows)
        self.files_written += 1
        return True

    def _write(self, rows: list[dict]) -> Path:
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
        first = rows[0]["time"]
        day = first.astimezone(dt.timezone.utc).date().isoformat()
        folder = self.dir / day
        folder.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        path = folder / f"answers-{stamp}-{os.getpid()}-{self._seq:06d}.parquet"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".answers-", suffix=".tmp")
        os.close(fd)
        try:
            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path


def log_row(request_id: str, answer, latency_ms: float, when: dt.datetime | None = None) -> dict:
    """The log row of one served Answer (slmrec.serve.recommender.Answer)."""
    return {
        "request_id": request_id,
        "time": when or dt.datetime.now(dt.timezone.utc),
        "user_id": answer.user_id,
        "history_len": answer.history_len,
        "unknown_items": list(answer.ignored_items),
        "k": answer.k,
        "items": list(answer.items),
        "scores": [float(s) for s in answer.scores],
        "model": answer.model,
        "latency_ms": float(latency_ms),
        "fallback": answer.fallback,
    }
