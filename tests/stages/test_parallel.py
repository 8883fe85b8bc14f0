"""`slmrec parallel-stages`: independent DVC stages run at once, stale ones only, failures named."""

import json
import sys
import textwrap

import pytest

from slmrec.cli import main
from slmrec.stages.parallel import parallel_stages, stage_commands


def write_project(tmp_path, up_to_date=(), stale_upstream=None):
    """A dvc.yaml whose stages record when they ran, and a fake `dvc` whose status marks `up_to_date` clean
    (and, with `stale_upstream`, reports that stage changed upstream of every stage asked about)."""
    stage = "{py} -c 'import time, sys; open(\"{n}.start\", \"w\").write(repr(time.time())); time.sleep(0.8); " \
            "open(\"{n}.end\", \"w\").write(repr(time.time())); print(\"hello from {n}\"); sys.exit({rc})'"
    stages = {n: {"cmd": stage.format(py=sys.executable, n=n, rc=1 if n == "bad" else 0)}
              for n in ("a", "b", "c", "bad")}
    (tmp_path / "dvc.yaml").write_text(json.dumps({"stages": stages}))
    fake = tmp_path / "fake-dvc"
    fake.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, sys
        if sys.argv[1] == "commit":  # record what was committed
            open("committed.json", "w").write(json.dumps(sys.argv[3:]))
            sys.exit(0)
        names = sys.argv[sys.argv.index("--with-deps") + 1:]
        out = {{n: [{{"changed outs": {{}}}}] for n in names if n not in {list(up_to_date)!r}}}
        if {stale_upstream!r}:
            out["dvc.yaml:" + {stale_upstream!r}] = [{{"changed deps": {{}}}}]
        print(json.dumps(out))
        """))
    fake.chmod(0o755)
    return [str(fake)]


def test_stale_stages_run_at_the_same_time_and_clean_ones_are_skipped(tmp_path):
    dvc = write_project(tmp_path, up_to_date=("c",))
    lines = []
    failed = parallel_stages(["a", "b", "c"], dvc, tmp_path / "dvc.yaml", log=lines.append)
    assert failed == []
    assert not (tmp_path / "c.start").exists()  # dvc status: up to date
    assert "up to date, not run: c" in lines
    start = {n: float((tmp_path / f"{n}.start").read_text()) for n in "ab"}
    end = {n: float((tmp_path / f"{n}.end").read_text()) for n in "ab"}
    assert max(start.values()) < min(end.values())  # both were running at once
    assert "[a] hello from a" in lines and "[b] hello from b" in lines  # each line names its stage
    assert json.loads((tmp_path / "committed.json").read_text()) == ["a", "b"]  # dvc commit -f a b: repro skips them


def test_a_failing_stage_is_named_and_the_others_finish(tmp_path):
    dvc = write_project(tmp_path)
    lines = []
    assert parallel_stages(["a", "bad"], dvc, tmp_path / "dvc.yaml", log=lines.append) == ["bad"]
    assert (tmp_path / "a.end").exists()
    assert "[bad] FAILED (exit 1)" in lines
    assert json.loads((tmp_path / "committed.json").read_text()) == ["a"]  # the failed stage is left to dvc repro


def test_a_stale_upstream_stage_is_an_error(tmp_path):
    dvc = write_project(tmp_path, stale_upstream="sasrec")
    with pytest.raises(ValueError, match=r"\['sasrec'\] upstream .* run `dvc repro sasrec` first"):
        parallel_stages(["a", "b"], dvc, tmp_path / "dvc.yaml", log=print)
    assert not (tmp_path / "a.start").exists()


def test_unknown_stage_and_cli_exit_codes(tmp_path, monkeypatch, capsys):
    write_project(tmp_path)
    with pytest.raises(ValueError, match=r"no stage\(s\) \['nope'\]"):
        stage_commands(["a", "nope"], tmp_path / "dvc.yaml")
    monkeypatch.setenv("SLMREC_DVC", str(tmp_path / "fake-dvc"))
    yml = str(tmp_path / "dvc.yaml")
    assert main(["parallel-stages", "nope", "--dvc-yaml", yml]) == 2
    assert "no stage(s) ['nope']" in capsys.readouterr().err
    assert main(["parallel-stages", "a", "bad", "--dvc-yaml", yml]) == 1
    assert "failed: bad" in capsys.readouterr().err
    assert main(["parallel-stages", "a", "--dvc-yaml", yml]) == 0
