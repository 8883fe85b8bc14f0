"""Two ingests into one DuckDB file at once: one waits for the other, or fails with a clear message
after its timeout; the store only ever holds whole batches (issue 10, item 4)."""

import json
import subprocess
import sys
import time

import duckdb
import pytest
from faults import PY, batch_state, env, ingest_command, write_seqtxt

from slmrec.data.ingest import StoreLockedError, ingest


def test_two_ingests_at_once_both_land_whole(tmp_path):
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    rows = [write_seqtxt(f, 3000, seed=k) for k, f in enumerate(files)]
    db = tmp_path / "w.duckdb"
    procs = [subprocess.Popen(ingest_command(f, db), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for f in files]  # both start on a store that does not exist yet
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
        reports.append(json.loads(out))
    assert not any(r["already_ingested"] for r in reports)
    for report, n in zip(reports, rows):
        assert batch_state(db, report["batch_id"]) == {"store": True, "rows": n, "recorded": True, "batches": 2}
    assert not [p.name for p in tmp_path.iterdir() if ".new-" in p.name]  # no temp store left behind


HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("CREATE TABLE IF NOT EXISTS hold (x INTEGER)")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def hold_lock(db, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([PY, "-c", HOLD, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_a_held_store_makes_ingest_wait_then_succeed(tmp_path):
    db = tmp_path / "w.duckdb"
    write_seqtxt(tmp_path / "a.txt", 100)
    ingest("seqtxt", str(tmp_path / "a.txt"), str(db))
    write_seqtxt(tmp_path / "b.txt", 100, seed=1)
    holder = hold_lock(db, 2.0)
    started = time.monotonic()
    report = ingest("seqtxt", str(tmp_path / "b.txt"), str(db), lock_timeout=60)
    waited = time.monotonic() - started
    holder.wait()
    assert report.accepted > 0 and waited >= 0.5  # it waited for the holder, then wrote its batch


def test_a_held_store_past_the_timeout_is_a_clear_error(tmp_path, capsys):
    db = tmp_path / "w.duckdb"
    write_seqtxt(tmp_path / "a.txt", 100)
    first = ingest("seqtxt", str(tmp_path / "a.txt"), str(db))
    write_seqtxt(tmp_path / "b.txt", 100, seed=1)
    holder = hold_lock(db, 6.0)
    try:
        with pytest.raises(StoreLockedError, match="locked by another process"):
            ingest("seqtxt", str(tmp_path / "b.txt"), str(db), lock_timeout=0.5)
        cli = subprocess.run(ingest_command(tmp_path / "b.txt", db, lock_timeout=0.5), env=env(),
                             capture_output=True, text=True)
    finally:
        holder.kill()
        holder.wait()
    assert cli.returncode == 2 and cli.stdout == ""
    message = [line for line in cli.stderr.splitlines() if line != "started"]
    assert len(message) == 1 and "locked by another process" in message[0] and "Traceback" not in cli.stderr
    with duckdb.connect(str(db), read_only=True) as con:  # the store is intact: the first batch, whole
        assert con.execute("SELECT count(*) FROM raw_interactions").fetchone()[0] == first.accepted
        assert con.execute("SELECT count(*) FROM ingest_batches").fetchone()[0] == 1
