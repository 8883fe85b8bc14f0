"""Where stages run: the Kubernetes pod spec built from params, the runner registry, failure messages."""

import dataclasses
import importlib.util
from pathlib import Path

import dagster as dg
import pytest

from orchestration.pipeline import DvcPipeline
from orchestration.runners import (
    K8sStageRunner,
    LocalStageRunner,
    k8s_runner,
    stage_failure,
    stage_runner_from_params,
)
from slmrec.config import AutomationConfig, K8sConfig, load_params

REPO = Path(__file__).resolve().parents[2]
HAS_DAGSTER_K8S = importlib.util.find_spec("dagster_k8s") is not None


def runner(**overrides) -> K8sStageRunner:
    cfg = K8sConfig(image="registry.example.com/slmrec:abc123", node_selector={"gpu": "a100"},
                    env={"HF_HUB_OFFLINE": "1"}, service_account="slmrec-runner")
    return k8s_runner(dataclasses.replace(cfg, **overrides))


def test_pod_spec_requests_a_gpu_mounts_the_cache_and_runs_the_dvc_stage():
    r = runner()
    command = DvcPipeline().stage_command("teacher", python="python")
    spec = r.pod_spec("teacher", command)
    (container,) = spec["containers"]
    assert container["image"] == "registry.example.com/slmrec:abc123"
    assert container["command"] == ["python", "-m", "orchestration.stage_entry", "teacher"]
    assert container["workingDir"] == "/workspace/slmrec"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "1"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SLMREC_CACHE"] == "/cache/slmrec" and env["HF_HUB_OFFLINE"] == "1" and env["DVC_NO_ANALYTICS"] == "1"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"workspace": "/workspace/slmrec", "model-cache": "/cache/slmrec", "dshm": "/dev/shm"}
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in spec["volumes"]}
    assert claims == {"workspace": "slmrec-workspace", "model-cache": "slmrec-cache", "dshm": None}
    assert spec["restartPolicy"] == "Never"
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["nodeSelector"] == {"gpu": "a100"} and spec["serviceAccountName"] == "slmrec-runner"


def test_pod_spec_without_gpus_and_bad_config():
    spec = runner(gpus=0).pod_spec("sasrec", ["python", "-m", "orchestration.stage_entry", "sasrec"])
    resources = spec["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in resources["limits"] and "tolerations" not in spec
    with pytest.raises(ValueError, match="automation.k8s.image is empty"):
        runner(image="").pod_spec("teacher", ["x"])
    with pytest.raises(ValueError, match="gpus must be >= 0"):
        runner(gpus=-1).pod_spec("teacher", ["x"])


def test_runner_is_chosen_by_params():
    assert isinstance(stage_runner_from_params(load_params(REPO / "params.yaml").automation), LocalStageRunner)
    k8s = stage_runner_from_params(AutomationConfig(stage_runner="k8s", k8s=K8sConfig(image="img", gpus=2)))
    assert isinstance(k8s, K8sStageRunner) and k8s.gpus == 2 and k8s.image == "img"
    with pytest.raises(ValueError, match="unknown runner 'slurm'"):
        stage_runner_from_params(AutomationConfig(stage_runner="slurm"))


def test_light_stages_stay_local(monkeypatch):
    calls = []
    monkeypatch.setattr(LocalStageRunner, "run", lambda self, context, pipeline, stage: calls.append(stage))
    runner().run(dg.build_asset_context(), DvcPipeline(), "ingest")
    assert calls == ["ingest"]


@pytest.mark.skipif(HAS_DAGSTER_K8S, reason="dagster-k8s is installed: the pod would really be launched")
def test_k8s_stage_without_dagster_k8s_fails_clearly():
    with pytest.raises(RuntimeError, match="pip install dagster-k8s==0.29.27"):
        runner().run(dg.build_asset_context(), DvcPipeline(), "teacher")


@pytest.mark.skipif(not HAS_DAGSTER_K8S, reason="dagster-k8s not installed")
def test_dagster_k8s_accepts_the_pod_spec():
    from dagster_k8s.pipes import build_pod_body

    spec = runner().pod_spec("student", ["python", "-m", "orchestration.stage_entry", "student"])
    pod = build_pod_body("p", None, None, {"DAGSTER_PIPES_CONTEXT": "x"}, runner().pod_meta("student"), spec)
    container = pod.spec.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert {e.name for e in container.env} >= {"SLMREC_CACHE", "DAGSTER_PIPES_CONTEXT"}


def test_stage_failure_names_the_first_error_line():
    tail = ["Running stage 'ingest':", "> slmrec ingest --params params.yaml",
            "slmrec ingest: error: [Errno 2] No such file or directory: 'data/raw/x.inter'",
            "ERROR: failed to reproduce 'ingest': failed to run: slmrec ingest ..., exited with 2"]
    failure = stage_failure("ingest", 2, ["python", "-m", "orchestration.stage_entry", "ingest"], tail)
    assert failure.description == ("DVC stage 'ingest' failed (exit 2): slmrec ingest: error: [Errno 2] "
                                   "No such file or directory: 'data/raw/x.inter'")
    assert failure.metadata["exit_code"].value == 2
    assert "exited with 2" in failure.metadata["output_tail"].value
