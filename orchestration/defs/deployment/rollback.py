"""Rollback as a Dagster job: re-promote the deployment that served before the current one.

The same function as `slmrec rollback` (slmrec/serve/deploy.py): the previous deployment's bytes are
verified, models/promoted.json is rewritten atomically, and the act is appended to
models/promotions.jsonl with who (this run) and why (the op's config). A running `slmrec serve`
hot-reloads the restored deployment within serve.reload_poll_seconds.
"""

import dagster as dg

from orchestration.pipeline import DvcPipeline
from slmrec.serve.deploy import rollback


class RollbackConfig(dg.Config):
    why: str = "rollback from Dagster"
    to: str = ""  # a content hash (prefix) from models/promotions.jsonl; empty: the previous deployment


@dg.op(description="Re-promote the previous deployment (or `to`), verified, recorded in the promotion history.")
def rollback_deployment(context: dg.OpExecutionContext, config: RollbackConfig, pipeline: DvcPipeline) -> dict:
    params = pipeline.params()
    try:
        record = rollback(pipeline.path(params.promotion.record), who=f"dagster run {context.run.run_id}",
                          why=config.why, to=config.to or None, root=pipeline.root,
                          models_dir=pipeline.path(params.serve.models_dir))
    except (ValueError, FileNotFoundError) as err:
        raise dg.Failure(description=f"rollback refused: {err}") from err
    context.log.info(f"promoted again: {record['model']} {record['content_hash'][:12]} ({record['deployment']})")
    return {"model": record["model"], "content_hash": record["content_hash"], "deployment": record["deployment"]}


@dg.job(description="Roll the served model back to the deployment that served before (slmrec rollback).")
def rollback_job():
    rollback_deployment()
