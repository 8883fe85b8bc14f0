"""The instance config `make ui` installs really keeps two stage steps apart (multiprocess executor)."""

import json
import shutil
from pathlib import Path

import dagster as dg

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def test_two_independent_stage_steps_never_overlap(tmp_path, monkeypatch):
    home, out = tmp_path / "dagster_home", tmp_path / "out"
    home.mkdir()
    out.mkdir()
    shutil.copy2(REPO / "orchestration/dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("POOL_TEST_DIR", str(out))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        # the executor's child processes import pool_job.py from this folder
        job = dg.build_reconstructable_job("pool_job", "two_stages_job", reconstructor_working_directory=str(HERE))
        result = dg.execute_job(job, instance=instance)
        assert result.success
        messages = [e.message or "" for e in result.all_events if e.event_type_value == "ENGINE_EVENT"]
    (a0, a1), (b0, b1) = (json.loads((out / n).read_text()) for n in ("stage_a", "stage_b"))
    assert a1 <= b0 or b1 <= a0, "the two steps ran at the same time"
    assert any("blocked by limit for pool dvc_stages" in m for m in messages)  # the pool, not chance
