"""The instance config `make ui` installs really keeps two stage steps apart (multiprocess executor)."""

import json
import shutil
from pathlib import Path

import dagster as dg
from pool_job import two_stages_job

REPO = Path(__file__).resolve().parents[2]


def test_two_independent_stage_steps_never_overlap(tmp_path, monkeypatch):
    home, out = tmp_path / "dagster_home", tmp_path / "out"
    home.mkdir()
    out.mkdir()
    shutil.copy2(REPO / "orchestration/dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("POOL_TEST_DIR", str(out))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = dg.execute_job(dg.reconstructable(two_stages_job), instance=instance)
        assert result.success
        messages = [e.message or "" for e in result.all_events if e.event_type_value == "ENGINE_EVENT"]
    (a0, a1), (b0, b1) = (json.loads((out / n).read_text()) for n in ("stage_a", "stage_b"))
    assert a1 <= b0 or b1 <= a0, "the two steps ran at the same time"
    assert any("blocked by limit for pool dvc_stages" in m for m in messages)  # the pool, not chance
