"""The answer log: every served answer as one row, durable on disk before the answer leaves.

    log = AnswerLog("results/serving", flush_rows=256, flush_seconds=2.0)   # replays an earlier spool first
    await asyncio.wrap_future(log.append(row))    # resolves once the row is fsynced (or quarantined)
    log.close()                                   # drains the queue, converts the spool to Parquet

The guarantee (README "Serving", tested by killing the server with SIGKILL under traffic):

    * a row is appended to a write-ahead spool (JSON lines) and the file is fsynced before `append`'s
      future resolves; the server sends a 2xx only after that. So **no delivered answer loses its row**,
      whatever kills the process (SIGKILL, OOM, power loss: the bytes are on the disk, not in a buffer).
    * the next start of any server on the same folder replays the spool segments that no live process
      holds (an flock on each open segment) into Parquet and reports the count (`recovered_rows`); a
      torn last line (a row whose write was interrupted: its answer was never sent) is discarded and
      counted (`torn_rows`).
    * rows of answers that were computed but not delivered (the client left, the process died between
      the fsync and the send) may be in the log: at most the requests in flight at that moment.
    * a row that cannot be serialised (a type error, a non-finite score) goes to `quarantine/*.jsonl`
      with the reason, fsynced; the writer goes on with the next row.
    * when the spool cannot be written (disk full, read-only), `append`'s future fails: the server
      answers 503 instead of a 2xx it cannot log; the queue is bounded (`max_queue`: a full queue fails
      at once), so memory stays bounded while the disk is broken.

Files: `DIR/YYYY-MM-DD/answers-<segment>.parquet` (the date of the rows' first answer; no `key=value`
folder names, so `read_parquet('DIR/**/*.parquet')` gives exactly the columns below), written under
a temp name, fsynced, renamed and the folder fsynced. A spool segment is converted when it holds
`flush_rows` rows or is `flush_seconds` old; its Parquet name is derived from the segment's, so a
replay after a crash between the two steps never writes a row twice.

Columns (what the monitoring reads): request_id, time (UTC), user_id ("anonymous" for a posted
history), history_len, unknown_count, unknown_items (a bounded sample), k, items, scores, model
(content hash), latency_ms, fallback.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import fcntl
import json
import math
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from slmrec.lineage import fsync_path

SCHEMA = pa.schema([
    ("request_id", pa.string()),
    ("time", pa.timestamp("us", tz="UTC")),
    ("user_id", pa.string()),
    ("history_len", pa.int32()),
    ("unknown_count", pa.int32()),
    ("unknown_items", pa.list_(pa.string())),
    ("k", pa.int32()),
    ("items", pa.list_(pa.string())),
    ("scores", pa.list_(pa.float64())),
    ("model", pa.string()),
    ("latency_ms", pa.float64()),
    ("fallback", pa.string()),
])  # fmt: skip
SPOOL, QUARANTINE = "spool", "quarantine"
UNKNOWN_SAMPLE = 10  # unknown item ids kept per row (the count is exact): one caller cannot bloat the log
_STOP = object()


class LogUnavailable(RuntimeError):
    """The row could not be made durable (queue full, disk error, log closed): the answer must not be sent."""


def _encode(row: dict) -> str:
    """One spool line; raises on anything the Parquet schema would refuse (checked here, not at conversion)."""
    pa.Table.from_pylist([row], schema=SCHEMA)  # types, nulls, list shapes
    if any(not math.isfinite(s) for s in row["scores"]) or not math.isfinite(row["latency_ms"]):
        raise ValueError("non-finite score or latency")
    return json.dumps({**row, "time": row["time"].isoformat()}, allow_nan=False, separators=(",", ":"))


def _decode(line: str) -> dict:
    row = json.loads(line)
    row["time"] = dt.datetime.fromisoformat(row["time"])
    return row


def write_parquet_durable(rows: list[dict], path: Path) -> None:
    """rows -> path: temp file, fsync, rename, fsync the folder (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".answers-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            pq.write_table(table, f, compression="zstd")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class _Segment:
    """One open spool file (JSON lines), flock-ed while this process writes it."""

    def __init__(self, folder: Path, seq: int):
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        self.path = folder / f"{stamp}-{os.getpid()}-{seq:06d}.jsonl"
        self.file = open(self.path, "ab")
        fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fsync_path(folder)  # the segment's name is durable before any row in it counts as durable
        self.rows, self.opened = 0, time.monotonic()

    def append(self, lines: list[str]) -> None:
        start = self.file.tell()
        try:
            self.file.write("".join(line + "\n" for line in lines).encode())
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError:
            try:  # no half line left behind for the next group (the replay would count it as torn)
                self.file.truncate(start)
                self.file.seek(start)
            except OSError:
                pass
            raise
        self.rows += len(lines)

    def close(self) -> None:
        self.file.close()  # releases the flock


def parquet_name(segment: Path) -> str:
    return f"answers-{segment.stem}.parquet"


def read_segment(path: Path) -> tuple[list[dict], int]:
    """(rows, torn lines) of a spool segment: a line that does not parse (an interrupted write) is torn."""
    rows, torn = [], 0
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            rows.append(_decode(line.decode()))
        except (ValueError, KeyError, UnicodeDecodeError):
            torn += 1
    return rows, torn


class AnswerLog:
    def __init__(self, log_dir: str | Path, flush_rows: int = 256, flush_seconds: float = 2.0,
                 max_queue: int = 10_000):
        if flush_rows < 1 or flush_seconds <= 0 or max_queue < 1:
            raise ValueError(f"answer log: flush_rows and max_queue must be >= 1 and flush_seconds > 0, got "
                             f"{flush_rows}, {max_queue}, {flush_seconds}")
        self.dir = Path(log_dir)
        self.spool = self.dir / SPOOL
        self.spool.mkdir(parents=True, exist_ok=True)
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._seq = 0
        self._segment: _Segment | None = None
        self._closed_segments: list[Path] = []  # spooled, not yet converted to Parquet (a failed conversion waits here)
        # counters (/metrics)
        self.rows_spooled = 0  # durable in the spool: == 2xx answers sent (plus undelivered ones)
        self.rows_written = 0  # in Parquet files
        self.files_written = 0
        self.write_errors = 0  # failed spool writes or conversions
        self.rows_refused = 0  # rows that could not be made durable: their requests were answered 503
        self.rows_quarantined = 0
        self.recovered_rows, self.torn_rows, self.recovered_segments = self.recover()
        self.last_error: str | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="answer-log", daemon=True)
        self._thread.start()

    # -- API (any thread)

    def append(self, row: dict) -> cf.Future:
        """Queue a row; the future resolves when it is durable, or fails with LogUnavailable."""
        future: cf.Future = cf.Future()
        if self._closed or not self._thread.is_alive():
            self.rows_refused += 1
            future.set_exception(LogUnavailable("answer log is closed" if self._closed else "answer log writer is dead"))
            return future
        try:
            self._queue.put_nowait((row, future))
        except queue.Full:
            self.rows_refused += 1
            future.set_exception(LogUnavailable(f"answer log queue full ({self._queue.maxsize} rows waiting for disk)"))
        return future

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def health(self) -> str | None:
        """None when rows are being made durable; else why not (for /ready)."""
        if not self._thread.is_alive():
            return "answer log writer is not running"
        return self.last_error

    def close(self, timeout: float = 30.0) -> None:
        """Make everything queued durable, convert the spool to Parquet, stop the writer.

        Raises if spooled rows could not be converted (they stay in the spool for the next start)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)  # blocking: the queue may be full, the writer drains it
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"answer log: writer did not finish within {timeout} s")
        if self._closed_segments:
            raise RuntimeError(f"answer log: {len(self._closed_segments)} spool segment(s) could not be converted; "
                               f"they stay in {self.spool} and are replayed at the next start")

    # -- recovery (at start, before the writer runs)

    def recover(self) -> tuple[int, int, int]:
        """Convert spool segments left by processes that are gone; (rows, torn lines, segments)."""
        rows_total = torn_total = segments = 0
        for path in sorted(self.spool.glob("*.jsonl")):
            with open(path, "rb") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live server is writing it
                rows, torn = read_segment(path)
                self._convert(path, rows)
                rows_total, torn_total, segments = rows_total + len(rows), torn_total + torn, segments + 1
        if segments:
            print(f"answer log: recovered {rows_total} row(s) from {segments} spool segment(s) of an earlier "
                  f"process in {self.spool}; {torn_total} torn line(s) discarded (interrupted writes: never answered)",
                  file=sys.stderr, flush=True)
        return rows_total, torn_total, segments

    def _convert(self, segment: Path, rows: list[dict]) -> None:
        """A closed segment -> its Parquet file (skipped when a crash came after the file was written), then
        the segment is removed."""
        if rows:
            day = rows[0]["time"].astimezone(dt.timezone.utc).date().isoformat()
            target = self.dir / day / parquet_name(segment)
            if not target.exists():
                write_parquet_durable(rows, target)
                self.files_written += 1
            self.rows_written += len(rows)
        segment.unlink()
        fsync_path(segment.parent)

    # -- the writer thread

    def _run(self) -> None:
        while True:
            try:
                if not self._step():
                    return
            except Exception as err:  # noqa: BLE001 - the writer must outlive any one failure: counted, shown
                self.write_errors += 1
                self.last_error = f"{type(err).__name__}: {err}"
                print(f"answer log: unexpected {self.last_error}; the writer goes on", file=sys.stderr, flush=True)
                time.sleep(0.05)

    def _step(self) -> bool:
        """Take a group of rows, make them durable, rotate the segment when due; False after close."""
        due = None if self._segment is None else self._segment.opened + self.flush_seconds
        if self._closed_segments:
            due = time.monotonic() + 1.0  # retry a failed conversion soon
        try:
            first = self._queue.get(timeout=None if due is None else max(0.0, due - time.monotonic()))
        except queue.Empty:
            first = None
        group, stop = [], first is _STOP
        if first is not None and not stop:
            group.append(first)
        while len(group) < 4096:  # group commit: everything waiting shares one fsync
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
            else:
                group.append(item)
        if group:
            self._spool(group)
        segment = self._segment
        if segment is not None and (stop or segment.rows >= self.flush_rows
                                    or time.monotonic() - segment.opened >= self.flush_seconds):
            self._segment = None
            segment.close()
            self._closed_segments.append(segment.path)
        self._convert_closed()
        return not stop

    def _spool(self, group: list[tuple[dict, cf.Future]]) -> None:
        lines, waiting, bad = [], [], []
        for row, future in group:
            try:
                lines.append(_encode(row))
                waiting.append(future)
            except Exception as err:  # noqa: BLE001 - one bad row goes to quarantine, the others are written
                bad.append((row, future, f"{type(err).__name__}: {err}"))
        if bad:
            self._quarantine(bad)
        if not lines:
            return
        try:
            if self._segment is None:
                self._seq += 1
                self._segment = _Segment(self.spool, self._seq)
            self._segment.append(lines)
        except OSError as err:
            self.write_errors += 1
            self.rows_refused += len(waiting)
            self.last_error = f"spool write failed: {err}"
            print(f"answer log: {self.last_error}; {len(waiting)} answer(s) refused (503)", file=sys.stderr, flush=True)
            for future in waiting:
                future.set_exception(LogUnavailable(self.last_error))
            if self._segment is not None and self._segment.rows == 0:
                self._segment.close()
                self._segment.path.unlink(missing_ok=True)
                self._segment = None
            return
        self.last_error = None
        self.rows_spooled += len(lines)
        for future in waiting:
            future.set_result(True)

    def _quarantine(self, bad: list[tuple[dict, cf.Future, str]]) -> None:
        folder = self.dir / QUARANTINE
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"quarantine-{os.getpid()}.jsonl"
        lines = "".join(json.dumps({"reason": reason, "row": repr(row)[:10_000]}) + "\n" for row, _, reason in bad)
        try:
            with open(path, "a") as f:
                f.write(lines)
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            self.write_errors += 1
            self.rows_refused += len(bad)
            for _, future, _ in bad:
                future.set_exception(LogUnavailable(f"quarantine write failed: {err}"))
            return
        self.rows_quarantined += len(bad)
        print(f"answer log: {len(bad)} row(s) quarantined in {path} ({bad[0][2]})", file=sys.stderr, flush=True)
        for _, future, _ in bad:
            future.set_result(True)  # accounted for on disk; the answer itself was fine

    def _convert_closed(self) -> None:
        while self._closed_segments:
            path = self._closed_segments[0]
            try:
                rows, _ = read_segment(path)
                self._convert(path, rows)
            except OSError as err:
                self.write_errors += 1
                self.last_error = f"Parquet conversion of {path.name} failed: {err} (rows are safe in the spool)"
                print(f"answer log: {self.last_error}", file=sys.stderr, flush=True)
                return
            self._closed_segments.pop(0)


def log_row(request_id: str, answer, latency_ms: float, when: dt.datetime | None = None) -> dict:
    """The log row of one served Answer (slmrec.serve.recommender.Answer); unknown items: count + a sample."""
    return {
        "request_id": request_id,
        "time": when or dt.datetime.now(dt.timezone.utc),
        "user_id": answer.user_id,
        "history_len": answer.history_len,
        "unknown_count": len(answer.ignored_items),
        "unknown_items": list(answer.ignored_items[:UNKNOWN_SAMPLE]),
        "k": answer.k,
        "items": list(answer.items),
        "scores": [float(s) for s in answer.scores],
        "model": answer.model,
        "latency_ms": float(latency_ms),
        "fallback": answer.fallback,
    }
