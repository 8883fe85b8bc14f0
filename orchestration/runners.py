"""Where a DVC stage's command runs: the `stage_runner` resource.

Both variants run the same command, `dvc repro --single-item STAGE`, through Dagster Pipes:

    LocalStageRunner   a subprocess on the Dagster host (the default: laptop, CI, one GPU box)
    K8sStageRunner     one pod per heavy stage (GPU request, image, model-cache volume) through
                       dagster-k8s' PipesK8sClient; light stages still run locally

`automation.stage_runner` in params.yaml picks one (`stage_runner_from_params`). The pod spec is
plain data built here, so it is tested without a cluster and without dagster-k8s installed.
"""

import re
import signal
import subprocess
import sys
from abc import ABC, abstractmethod
from collections import deque

import dagster as dg

from orchestration.pipeline import DvcPipeline
from slmrec.config import AutomationConfig, K8sConfig, to_dict

ERROR_LINE = re.compile(r"\berror\b|^\w*(Error|Exception)\b", re.IGNORECASE)
DVC_WRAPPER = re.compile(r"^ERROR: failed to reproduce")  # DVC's summary line: the cause is above it
BAD_INPUT = re.compile(r"^slmrec( [\w-]+)*: error: ")  # the CLI's clean bad-input message: retrying cannot help


class StageRunner(dg.ConfigurableResource, ABC):
    """Runs one DVC stage of `pipeline` for an asset; raises dg.Failure when the stage fails."""

    @abstractmethod
    def run(self, context: dg.AssetExecutionContext, pipeline: DvcPipeline, stage: str) -> None: ...


class LocalStageRunner(StageRunner):
    """The stage as a local Pipes subprocess; its output streams into the step's log."""

    tail_lines: int = 40  # last output lines kept for the failure message (and the alert)
    termination_timeout_s: float = 20.0  # after SIGINT on a terminated run, then SIGKILL

    def run(self, context: dg.AssetExecutionContext, pipeline: DvcPipeline, stage: str) -> None:
        command = pipeline.stage_command(stage)
        tail: deque[str] = deque(maxlen=self.tail_lines)
        with dg.open_pipes_session(
            context=context,
            context_injector=dg.PipesEnvContextInjector(),
            message_reader=dg.PipesTempFileMessageReader(),
        ) as session:
            proc = subprocess.Popen(
                command,
                cwd=pipeline.root,
                env={**pipeline.env(), **session.get_bootstrap_env_vars()},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
            )
            try:
                for line in proc.stdout:
                    sys.stdout.write(line)  # the step's stdout: the compute log shown in the UI
                    tail.append(line.rstrip())
                returncode = proc.wait()
            finally:
                if proc.poll() is None:  # the run was terminated: stop the stage the way Ctrl-C would
                    proc.send_signal(signal.SIGINT)
                    try:
                        proc.wait(timeout=self.termination_timeout_s)
                    except subprocess.TimeoutExpired:
                        proc.kill()
        for report in session.get_custom_messages():  # from orchestration/stage_entry.py, read at session close
            context.log.info(f"stage {report['stage']}: exit {report['returncode']}, DVC outs {report['outs']}")
        if returncode != 0:
            raise stage_failure(stage, returncode, command, list(tail))


def stage_failure(stage: str, returncode: int, command: list[str], tail: list[str]) -> dg.Failure:
    """A readable failure: the first error line of the stage's output, and its last lines as metadata."""
    hits = [line for line in tail if ERROR_LINE.search(line)]
    cause = next((line for line in hits if not DVC_WRAPPER.match(line)), hits[0] if hits else (tail[-1] if tail else "no output"))
    return dg.Failure(
        description=f"DVC stage '{stage}' failed (exit {returncode}): {cause}",
        allow_retries=not any(BAD_INPUT.match(line) for line in tail),
        metadata={
            "stage": dg.MetadataValue.text(stage),
            "exit_code": dg.MetadataValue.int(returncode),
            "command": dg.MetadataValue.text(" ".join(command)),
            "output_tail": dg.MetadataValue.md("```\n" + "\n".join(tail) + "\n```"),
        },
    )


class K8sStageRunner(LocalStageRunner):
    """Stages listed in `stages` run as a pod (PipesK8sClient); the others run locally."""

    image: str
    namespace: str = "default"
    stages: list[str] = ["sasrec", "teacher", "student_nokd", "student", "evaluate"]
    gpus: int = 1
    cpu: str = "4"
    memory: str = "32Gi"
    workspace_claim: str = "slmrec-workspace"
    workspace_mount: str = "/workspace/slmrec"
    cache_claim: str = "slmrec-cache"
    cache_mount: str = "/cache/slmrec"
    node_selector: dict[str, str] = {}
    service_account: str | None = None
    env: dict[str, str] = {}

    def run(self, context: dg.AssetExecutionContext, pipeline: DvcPipeline, stage: str) -> None:
        if stage not in self.stages:
            return super().run(context, pipeline, stage)
        spec = self.pod_spec(stage, pipeline.stage_command(stage, python="python"))
        client = pipes_k8s_client()
        context.log.info(f"stage {stage}: pod in namespace {self.namespace}, image {self.image}, {self.gpus} GPU(s)")
        client.run(context=context, namespace=self.namespace, base_pod_meta=self.pod_meta(stage), base_pod_spec=spec)

    def pod_meta(self, stage: str) -> dict:
        return {"labels": {"app.kubernetes.io/name": "slmrec", "slmrec/stage": stage.replace("_", "-")}}

    def pod_spec(self, stage: str, command: list[str]) -> dict:
        """The PodSpec (camelCase, as `kubectl` reads it) of one stage: the first container speaks Pipes."""
        if not self.image:
            raise ValueError("automation.k8s.image is empty: set an image with this project installed "
                             f"(needed to run stage {stage!r} as a pod)")
        if self.gpus < 0:
            raise ValueError(f"automation.k8s.gpus must be >= 0, got {self.gpus}")
        env = {"DVC_NO_ANALYTICS": "1", "SLMREC_NO_TQDM": "1", "SLMREC_CACHE": self.cache_mount, **self.env}
        resources = {"requests": {"cpu": self.cpu, "memory": self.memory}, "limits": {"memory": self.memory}}
        if self.gpus:
            # extended resources are set as limits (requests default to them); both for clarity
            resources["requests"]["nvidia.com/gpu"] = str(self.gpus)
            resources["limits"]["nvidia.com/gpu"] = str(self.gpus)
        container = {
            "name": f"stage-{stage.replace('_', '-')}",
            "image": self.image,
            "imagePullPolicy": "IfNotPresent",
            "command": command,
            "workingDir": self.workspace_mount,
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "resources": resources,
            "volumeMounts": [
                {"name": "workspace", "mountPath": self.workspace_mount},
                {"name": "model-cache", "mountPath": self.cache_mount},
                {"name": "dshm", "mountPath": "/dev/shm"},  # PyTorch data loaders / NCCL need shared memory
            ],
        }
        spec: dict = {
            "restartPolicy": "Never",  # a failed stage fails the step; Dagster's RetryPolicy decides on retries
            "containers": [container],
            "volumes": [
                {"name": "workspace", "persistentVolumeClaim": {"claimName": self.workspace_claim}},
                {"name": "model-cache", "persistentVolumeClaim": {"claimName": self.cache_claim}},
                {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            ],
        }
        if self.gpus:
            spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        if self.node_selector:
            spec["nodeSelector"] = dict(self.node_selector)
        if self.service_account:
            spec["serviceAccountName"] = self.service_account
        return spec


def pipes_k8s_client():
    """dagster-k8s' PipesK8sClient; a clear error (at run time, not at load) when it is not installed."""
    try:
        from dagster_k8s import PipesK8sClient
    except ModuleNotFoundError as err:
        raise RuntimeError(
            "automation.stage_runner is 'k8s' but dagster-k8s is not installed: "
            "pip install dagster-k8s==0.29.27 (the release that matches dagster 1.13.27)"
        ) from err
    return PipesK8sClient()


def k8s_runner(cfg: K8sConfig) -> K8sStageRunner:
    return K8sStageRunner(**to_dict(cfg))


RUNNERS = {
    "local": lambda cfg: LocalStageRunner(),
    "k8s": lambda cfg: k8s_runner(cfg.k8s),
}


def stage_runner_from_params(cfg: AutomationConfig) -> StageRunner:
    if cfg.stage_runner not in RUNNERS:
        raise ValueError(f"automation.stage_runner: unknown runner {cfg.stage_runner!r}; known: {sorted(RUNNERS)}")
    return RUNNERS[cfg.stage_runner](cfg)
