"""bench/study.py: a lever is params.yaml with typed overrides; a bad override fails before any training."""

import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def study():
    spec = importlib.util.spec_from_file_location("study", ROOT / "bench" / "study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_overrides_are_parsed_as_yaml_and_leave_the_base_alone():
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    out = study().with_overrides(
        base, ["llm.windows_per_user=null", "llm.lora_targets=[q_proj, v_proj]", "train_llm.lr=3e-4"]
    )
    assert out["llm"]["windows_per_user"] is None
    assert out["llm"]["lora_targets"] == ["q_proj", "v_proj"]
    assert out["train_llm"]["lr"] == pytest.approx(3e-4)
    assert base["llm"]["windows_per_user"] == 1  # the base dict is not modified


@pytest.mark.parametrize("spec", ["nogroup.x=1", "llm=3", "llm.teacher_layers", "llm.no_such_key=1", "train_llm.epochs=2.5"])
def test_a_malformed_override_names_itself(spec):
    with pytest.raises(SystemExit, match="--set"):
        study().with_overrides({"llm": {"teacher_layers": 8}, "train_llm": {"epochs": 3}}, [spec])


def test_run_refuses_an_override_of_the_wrong_type_before_training(tmp_path):
    m = study()
    args = m.argparse.Namespace(
        name="bad", model="teacher", set=["llm.teacher_layers=[1, 2]"], params=str(ROOT / "params.yaml"),
        splits="unused", sasrec="unused", teacher=None, runs=str(tmp_path),
    )
    with pytest.raises(SystemExit, match="teacher_layers"):
        m.run(args)
    assert not (tmp_path / "bad" / "models").exists()  # nothing trained
