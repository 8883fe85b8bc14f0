"""A job for test_pools.py: two independent assets in the stage pool, run by the multiprocess executor
(in a module of its own so the executor's child processes can import it)."""

import json
import os
import time
from pathlib import Path

import dagster as dg

from orchestration.pipeline import STAGE_POOL


def _stage(name: str) -> dg.AssetsDefinition:
    @dg.asset(name=name, pool=STAGE_POOL)
    def _asset() -> None:
        start = time.time()
        time.sleep(1.0)
        Path(os.environ["POOL_TEST_DIR"], name).write_text(json.dumps([start, time.time()]))

    return _asset


def two_stages_job() -> dg.JobDefinition:
    defs = dg.Definitions(
        assets=[_stage("stage_a"), _stage("stage_b")],
        jobs=[dg.define_asset_job("two_stages", executor_def=dg.multiprocess_executor)],
    )
    return defs.resolve_job_def("two_stages")
