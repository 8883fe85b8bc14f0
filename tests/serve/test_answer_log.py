"""The answer log: durable (fsynced spool) before a row counts, Parquet by segment, quarantine, recovery."""

import datetime as dt
import json
import math
import threading
import time

import duckdb
import pytest

from slmrec.serve import answer_log as al
from slmrec.serve.answer_log import SCHEMA, AnswerLog, LogUnavailable, log_row, read_segment
from slmrec.serve.recommender import Answer


def row(n: int, unknown: int | None = None) -> dict:
    ignored = [f"zz{j}" for j in range(unknown if unknown is not None else n % 2)]
    answer = Answer(f"u{n}", ["a", "b"], [0.5, 0.25], "hash", None, ignored, 3, 2)
    return log_row(f"req-{n}", answer, 1.5, dt.datetime(1998, 3, 1, 12, tzinfo=dt.timezone.utc))


def read(log_dir):
    return duckdb.sql(f"SELECT * FROM read_parquet('{log_dir}/**/*.parquet') ORDER BY request_id").df()


def append_all(log, rows, timeout=10.0):
    for r in rows:
        assert log.append(r).result(timeout) is True


def test_rows_segments_files_and_close(tmp_path):
    log = AnswerLog(tmp_path, flush_rows=4, flush_seconds=60.0)
    append_all(log, [row(n) for n in range(10)])  # one at a time: segments of 4, 4, then 2 at close
    log.close()
    rows = read(tmp_path)
    assert sorted(rows.request_id) == sorted(f"req-{n}" for n in range(10))
    assert list(rows.columns) == SCHEMA.names
    assert (log.rows_spooled, log.rows_written, log.files_written) == (10, 10, 3)
    assert all(p.parent.name == "1998-03-01" for p in tmp_path.rglob("*.parquet"))
    assert not list(tmp_path.rglob("*.tmp")) and not list((tmp_path / "spool").iterdir())
    first = rows[rows.request_id == "req-1"].iloc[0]
    assert list(first["items"]) == ["a", "b"] and list(first.unknown_items) == ["zz0"] and first.fallback is None
    with pytest.raises(LogUnavailable, match="closed"):
        log.append(row(11)).result(1)


def test_unknown_items_are_counted_and_sampled(tmp_path):
    log = AnswerLog(tmp_path)
    append_all(log, [row(0, unknown=500)])
    log.close()
    stored = read(tmp_path).iloc[0]
    assert stored.unknown_count == 500 and len(stored.unknown_items) == al.UNKNOWN_SAMPLE


def test_a_row_is_on_disk_before_its_future_resolves(tmp_path):
    log = AnswerLog(tmp_path, flush_rows=1000, flush_seconds=60.0)  # no Parquet conversion during the test
    append_all(log, [row(0), row(1)])
    (segment,) = (tmp_path / "spool").glob("*.jsonl")
    rows, torn = read_segment(segment)  # what a reader (or the next start after SIGKILL) finds on disk
    assert [r["request_id"] for r in rows] == ["req-0", "req-1"] and torn == 0
    assert not list(tmp_path.rglob("*.parquet"))
    log.close()
    assert len(read(tmp_path)) == 2


def test_time_based_conversion(tmp_path):
    log = AnswerLog(tmp_path, flush_rows=1000, flush_seconds=0.2)
    append_all(log, [row(0)])
    deadline = time.monotonic() + 10
    while log.rows_written == 0:
        assert time.monotonic() < deadline, "the segment was not converted after flush_seconds"
        time.sleep(0.02)
    assert len(read(tmp_path)) == 1
    log.close()


def test_a_failed_spool_write_refuses_those_rows_and_recovers(tmp_path, monkeypatch):
    log = AnswerLog(tmp_path, flush_rows=100, flush_seconds=60.0)
    real, calls = al._Segment.append, []

    def flaky(self, lines):
        calls.append(len(lines))
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real(self, lines)

    monkeypatch.setattr(al._Segment, "append", flaky)
    with pytest.raises(LogUnavailable, match="No space left"):
        log.append(row(0)).result(10)
    assert log.rows_refused == 1 and log.write_errors == 1 and "No space left" in log.health()
    append_all(log, [row(1), row(2)])  # the disk is back: rows are durable again, health clears
    assert log.health() is None
    log.close()
    assert sorted(read(tmp_path).request_id) == ["req-1", "req-2"]  # req-0 was never answered 2xx


def test_a_bad_row_is_quarantined_and_the_writer_goes_on(tmp_path):
    log = AnswerLog(tmp_path)
    bad_type = {**row(1), "items": [1, 2]}  # ints where the schema has strings
    bad_score = {**row(2), "scores": [math.nan, 0.1]}
    futures = [log.append(r) for r in (row(0), bad_type, bad_score, row(3))]
    assert [f.result(10) for f in futures] == [True] * 4
    log.close()
    assert sorted(read(tmp_path).request_id) == ["req-0", "req-3"] and log.rows_quarantined == 2
    (quarantine,) = (tmp_path / "quarantine").glob("*.jsonl")
    reasons = [json.loads(line)["reason"] for line in quarantine.read_text().splitlines()]
    assert any("ArrowTypeError" in r or "ArrowInvalid" in r for r in reasons) and any("non-finite" in r for r in reasons)


def test_the_writer_survives_an_unexpected_exception(tmp_path, monkeypatch):
    log = AnswerLog(tmp_path, flush_rows=1, flush_seconds=60.0)
    real, calls = log._convert_closed, []

    def boom():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in the writer")
        return real()

    monkeypatch.setattr(log, "_convert_closed", boom)
    append_all(log, [row(0)])
    append_all(log, [row(1)])  # the writer thread is still alive and converts both segments
    assert log.alive and log.write_errors == 1
    log.close()
    assert sorted(read(tmp_path).request_id) == ["req-0", "req-1"]


def test_a_full_queue_refuses_at_once(tmp_path, monkeypatch):
    log = AnswerLog(tmp_path, max_queue=2)
    release, real = threading.Event(), al._Segment.append
    monkeypatch.setattr(al._Segment, "append", lambda self, lines: (release.wait(10), real(self, lines))[1])
    futures = [log.append(row(n)) for n in range(6)]  # the writer holds at most one group; 2 wait; the rest refused
    refused = [f for f in futures if f.done() and isinstance(f.exception(), LogUnavailable)]
    assert len(refused) >= 3 and "queue full" in str(refused[0].exception())
    release.set()
    log.close()
    assert len(read(tmp_path)) == 6 - len(refused) == log.rows_spooled


def _crashed_segment(folder, name, rows, torn_tail: str | None):
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(al._encode(r) + "\n" for r in rows) + (torn_tail or "")
    (folder / name).write_text(text)


def test_recovery_replays_an_earlier_process_spool_once(tmp_path, capsys):
    spool = tmp_path / "spool"
    _crashed_segment(spool, "20260101T000000000000-99999-000001.jsonl", [row(0), row(1)], '{"request_id": "req-9", "ti')
    _crashed_segment(spool, "20260101T000000000000-99999-000002.jsonl", [row(2)], None)
    # the second segment was converted before the crash, but not yet removed: no row twice
    al.write_parquet_durable([row(2)], tmp_path / "1998-03-01" / al.parquet_name(spool / "20260101T000000000000-99999-000002.jsonl"))
    log = AnswerLog(tmp_path)
    assert (log.recovered_rows, log.torn_rows, log.recovered_segments) == (3, 1, 2)
    assert "recovered 3 row(s) from 2 spool segment(s)" in capsys.readouterr().err
    log.close()
    assert sorted(read(tmp_path).request_id) == ["req-0", "req-1", "req-2"]
    assert AnswerLog(tmp_path).recovered_rows == 0  # idempotent: nothing left to replay


def test_a_live_process_segment_is_not_taken(tmp_path):
    first = AnswerLog(tmp_path, flush_rows=1000, flush_seconds=60.0)
    append_all(first, [row(0)])
    second = AnswerLog(tmp_path)  # another server on the same folder starts: it must not steal the open segment
    assert second.recovered_segments == 0
    second.close()
    first.close()
    assert list(read(tmp_path).request_id) == ["req-0"]
