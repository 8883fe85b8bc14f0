"""Immutable deployments (issue 17): a restart serves what was promoted, never what a later retrain left in
models/; changed bytes are refused; /ready says when served != promoted; `slmrec rollback` re-promotes."""

import json
import os
import shutil
import signal
import time

import httpx
import pytest

from slmrec import cli
from slmrec.serve.deploy import deploy, history, promote, verify

from serve_helpers import card_hash, start, wait_gone


@pytest.fixture
def project(pipeline, tmp_path):
    """A project dir: models/student (a workspace copy of the tiny student), params.yaml, no promotion yet."""
    shutil.copytree(pipeline / "models" / "student", tmp_path / "models" / "student")
    (tmp_path / "params.yaml").write_text(
        "promotion: {record: models/promoted.json}\n"
        "serve: {reload_poll_seconds: 0.2, log_flush_seconds: 0.5, models_dir: models}\n")
    return tmp_path


def flip_byte(path):
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    original = bytes(data)
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return original


def ready(url):
    return httpx.get(url + "/ready", timeout=5)


def wait_for(url, predicate, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate(r := ready(url)):
        assert time.monotonic() < deadline, f"never {what}: {r.text}"
        time.sleep(0.1)
    return r


def test_deploy_is_a_read_only_content_addressed_copy(pipeline, project):
    a = deploy(project / "models/student", "models", root=project)
    assert a.dir == project / "models/deployed" / card_hash(pipeline / "models/student")[:16]
    assert oct(a.model_dir.stat().st_mode & 0o777) == "0o555" and (a.splits_dir / "stats.json").is_file()
    assert deploy(project / "models/student", "models", root=project) == a  # idempotent
    original = flip_byte(a.model_dir / "model.pt")
    with pytest.raises(ValueError, match="modified after deployment"):
        verify(a)
    (a.model_dir / "model.pt").write_bytes(original)


def test_restart_serves_the_promoted_deployment_refuses_changed_bytes_and_rolls_back(pipeline, project, zygote):
    record, log = project / "models/promoted.json", project / "log"
    a_hash, b_hash = card_hash(pipeline / "models/student"), card_hash(pipeline / "models/teacher")
    a = deploy(project / "models/student", "models", root=project)
    promote(record, a, "student", who="test", why="A passed the gate", root=project)
    # a retrain rewrites models/student in place and its candidate B is refused: no promotion
    shutil.rmtree(project / "models/student")
    shutil.copytree(pipeline / "models/teacher", project / "models/student")
    args = ["--params", str(project / "params.yaml"), "--root", str(project), "--log", str(log), "--threads", "1"]

    # changed bytes in the promoted deployment: the server refuses to start
    original = flip_byte(a.model_dir / "model.pt")
    out = project / "refused.out"
    with pytest.raises(AssertionError, match="server exited"):
        start(zygote, args, out)
    assert "refusing to serve it" in out.read_text() and "modified after training" in out.read_text()
    (a.model_dir / "model.pt").write_bytes(original)

    pid, url = start(zygote, args, project / "server.out")  # restart: it serves A, not what models/student holds
    try:
        body = ready(url).json()
        assert body["model"] == body["promoted"] == a_hash == json.loads(record.read_text())["content_hash"]
        assert httpx.get(url + "/recommend/u3?k=3").json()["model"] == a_hash

        b = deploy(pipeline / "models/teacher", project / "models", root=project)  # a later model that passes
        promote(record, b, "teacher", who="test", why="B passed the gate", root=project)
        wait_for(url, lambda r: r.status_code == 200 and r.json()["model"] == b_hash, "serving B")

        good = record.read_text()  # a record naming bytes that are not the deployment's: 503 while it lasts
        record.write_text(json.dumps({**json.loads(good), "content_hash": "0" * 64}))
        r = wait_for(url, lambda r: r.status_code == 503, "503 on a mismatch")
        assert "promoted 000000000000 not loaded" in r.json()["reasons"][0] and r.json()["model"] == b_hash
        record.write_text(good)
        wait_for(url, lambda r: r.status_code == 200, "ready again")

        assert cli.main(["rollback", "--params", str(project / "params.yaml"), "--root", str(project),
                         "--why", "B answers badly"]) == 0
        wait_for(url, lambda r: r.status_code == 200 and r.json()["model"] == a_hash, "serving A after the rollback")
        assert httpx.get(url + "/recommend/u3?k=3").json()["model"] == a_hash
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_gone(pid)
    actions = [(e["action"], e["content_hash"], e["previous"]) for e in history(record)]
    assert actions == [("promote", a_hash, None), ("promote", b_hash, a_hash), ("rollback", a_hash, b_hash)]
    assert history(record)[-1]["why"] == "B answers badly" and "@" in history(record)[-1]["who"]


def test_rollback_without_a_previous_deployment_is_a_clear_error(project, capsys):
    a = deploy(project / "models/student", "models", root=project)
    promote(project / "models/promoted.json", a, "student", who="test", why="first", root=project)
    assert cli.main(["rollback", "--params", str(project / "params.yaml"), "--root", str(project)]) == 2
    assert "nothing to roll back to" in capsys.readouterr().err


def test_the_dagster_rollback_job(pipeline, project):
    import dagster as dg

    from orchestration.defs.deployment.rollback import rollback_job
    from orchestration.pipeline import DvcPipeline

    record = project / "models/promoted.json"
    a = deploy(project / "models/student", "models", root=project)
    b = deploy(pipeline / "models/teacher", project / "models", root=project)
    promote(record, a, "student", who="test", why="A", root=project)
    promote(record, b, "teacher", who="test", why="B", root=project)
    with dg.instance_for_test() as instance:
        result = rollback_job.execute_in_process(
            instance=instance, resources={"pipeline": DvcPipeline(project_dir=str(project))},
            run_config={"ops": {"rollback_deployment": {"config": {"why": "drift after B"}}}})
    assert result.success
    assert json.loads(record.read_text())["content_hash"] == a.content_hash
    last = history(record)[-1]
    assert (last["action"], last["why"], last["who"]) == ("rollback", "drift after B", f"dagster run {result.run_id}")
