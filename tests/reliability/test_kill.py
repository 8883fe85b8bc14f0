"""kill -9 at random points: an ingest leaves its whole batch or none of it, training resumes to the
same final weights (issue 10, item 4). Trial counts here are small; bench/bench_reliability.py runs more."""

import json
import random
import subprocess
import time

import pytest
from faults import batch_state, env, final_state, ingest_command, kill_ingest_trial, kill_training_trial
from faults import run_training, write_seqtxt

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # subprocesses: ~1 min on 2 shared cores


@pytest.fixture(scope="module")
def log_file(tmp_path_factory):
    """A 180k-event sequence file, its batch id and size, and how long one uninterrupted ingest takes."""
    tmp = tmp_path_factory.mktemp("kill_ingest")
    path = tmp / "seq.txt"
    rows = write_seqtxt(path, 8000)
    db = tmp / "ref.duckdb"
    proc = subprocess.Popen(ingest_command(path, db), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stderr.readline().strip() == b"started"
    started = time.monotonic()
    out, err = proc.communicate()
    report = json.loads(out)
    assert proc.returncode == 0 and report["rows_read"] == rows
    return path, report["batch_id"], rows, time.monotonic() - started


@pytest.mark.parametrize("existing_store", [False, True], ids=["new-store", "existing-store"])
def test_kill9_ingest_leaves_the_whole_batch_or_nothing(tmp_path, log_file, existing_store):
    path, batch_id, rows, duration = log_file
    rng = random.Random(10 + existing_store)
    outcomes = []
    for trial in range(2):
        db = tmp_path / f"w{trial}.duckdb"
        if existing_store:  # another batch already stored: the kill must not touch it
            other = tmp_path / f"other{trial}.txt"
            other_rows = write_seqtxt(other, 50, seed=99)
            from slmrec.data.ingest import ingest

            other_id = ingest("seqtxt", str(other), str(db)).batch_id
        result = kill_ingest_trial(path, db, batch_id, rows, delay=rng.uniform(0.0, duration * 1.5))
        assert result["after_kill"] in ("none", "whole", "exited"), result
        assert result["rerun_ok"], result
        if existing_store:
            assert batch_state(db, other_id) == {"store": True, "rows": other_rows, "recorded": True, "batches": 2}
        outcomes.append(result)
    print(outcomes)


def test_kill9_training_resumes_to_identical_weights(tmp_path):
    run_training(tmp_path / "reference")
    reference = final_state(tmp_path / "reference")
    assert reference["step"] == 18  # 3 epochs x 6 batches, a checkpoint every step
    rng = random.Random(4)
    for trial in range(2):
        step = rng.randrange(1, 17)
        result = kill_training_trial(tmp_path / f"killed{trial}", reference, step, rng.uniform(0.0, 0.05))
        assert result["identical"], result
