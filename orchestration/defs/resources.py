"""Resources shared by every domain: the DVC pipeline bridge and the Pipes client for stage subprocesses."""

import dagster as dg

from orchestration.pipeline import DvcPipeline


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(
        resources={
            "pipeline": DvcPipeline(),
            "pipes_subprocess_client": dg.PipesSubprocessClient(),
        }
    )
