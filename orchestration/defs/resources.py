"""Resources shared by every domain: the DVC project and where its stages run."""

import dagster as dg

from orchestration.pipeline import PROJECT_DIR, DvcPipeline
from orchestration.runners import stage_runner_from_params
from slmrec.config import load_params


@dg.definitions
def resources() -> dg.Definitions:
    automation = load_params(PROJECT_DIR / "params.yaml").automation
    return dg.Definitions(
        resources={
            "pipeline": DvcPipeline(),
            "stage_runner": stage_runner_from_params(automation),  # local subprocess, or k8s pods
        }
    )
