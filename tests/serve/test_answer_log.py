"""The answer log writer: one writer thread, atomic Parquet files, flush on close, failed writes retried."""

import datetime as dt
import time

import duckdb
import pytest

from slmrec.serve.answer_log import SCHEMA, AnswerLog, log_row
from slmrec.serve.recommender import Answer


def row(n: int) -> dict:
    answer = Answer(f"u{n}", ["a", "b"], [0.5, 0.25], "hash", None, ["zz"] if n % 2 else [], 3, 2)
    return log_row(f"req-{n}", answer, 1.5, dt.datetime(1998, 3, 1, 12, tzinfo=dt.timezone.utc))


def read(log_dir):
    return duckdb.sql(f"SELECT * FROM read_parquet('{log_dir}/**/*.parquet') ORDER BY request_id").df()


def test_rows_files_and_close_flush(tmp_path):
    log = AnswerLog(tmp_path, flush_rows=4, flush_seconds=60.0)
    for n in range(10):
        log.append(row(n))
    log.close()  # the last 2 rows are below flush_rows: close writes them
    rows = read(tmp_path)
    assert sorted(rows.request_id) == sorted(f"req-{n}" for n in range(10))
    assert list(rows.columns) == SCHEMA.names and log.rows_written == 10 and log.files_written == 3
    assert all(p.parent.name == "1998-03-01" for p in tmp_path.rglob("*.parquet"))
    assert not list(tmp_path.rglob("*.tmp"))
    first = rows[rows.request_id == "req-1"].iloc[0]
    assert list(first["items"]) == ["a", "b"] and list(first.unknown_items) == ["zz"] and first.fallback is None
    with pytest.raises(RuntimeError, match="closed"):
        log.append(row(11))


def test_time_based_flush(tmp_path):
    log = AnswerLog(tmp_path, flush_rows=1000, flush_seconds=0.2)
    log.append(row(0))
    deadline = dt.datetime.now() + dt.timedelta(seconds=10)
    while log.rows_written == 0:
        assert dt.datetime.now() < deadline, "the row was not flushed after flush_seconds"
        time.sleep(0.02)
    log.close()
    assert len(read(tmp_path)) == 1


def test_a_failed_write_keeps_its_rows_for_the_next_flush(tmp_path, monkeypatch):
    log = AnswerLog(tmp_path, flush_rows=2, flush_seconds=60.0)
    real, calls = log._write, []

    def flaky(rows):
        calls.append(len(rows))
        if len(calls) == 1:
            raise OSError("disk full")
        return real(rows)

    monkeypatch.setattr(log, "_write", flaky)
    for n in range(5):
        log.append(row(n))
    log.close()
    assert log.write_errors == 1 and calls[0] == 2  # the first batch failed ...
    assert sorted(read(tmp_path).request_id) == [f"req-{n}" for n in range(5)]  # ... and was written later


def test_close_raises_when_rows_cannot_be_written(tmp_path, monkeypatch):
    log = AnswerLog(tmp_path, flush_rows=100, flush_seconds=60.0)
    monkeypatch.setattr(log, "_write", lambda rows: (_ for _ in ()).throw(OSError("read-only")))
    log.append(row(0))
    with pytest.raises(RuntimeError, match="1 row"):
        log.close()
