"""Notice new (or changed) files in the landing folder and request the day's ingestion run."""

import json

import dagster as dg

from orchestration.landing import LANDING_NAME, file_fingerprint, landing_files
from orchestration.pipeline import DvcPipeline

landing_ingest_job = dg.define_asset_job(
    "landing_ingest_job",
    selection=dg.AssetSelection.assets("landing_interactions"),
    description="Ingest one day of landing files into DuckDB.",
)


@dg.sensor(job=landing_ingest_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def landing_folder_sensor(context: dg.SensorEvaluationContext, pipeline: DvcPipeline):
    """One run per (file, content) pair: the cursor remembers fingerprints already requested."""
    landing_dir = pipeline.path(pipeline.params().data.landing_dir)
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    requests = []
    for day, files in landing_files(landing_dir).items():
        for f in files:
            fp = file_fingerprint(f)
            if seen.get(f.name) == fp:
                continue
            seen[f.name] = fp
            requests.append(dg.RunRequest(run_key=f"{f.name}:{fp}", partition_key=day, tags={"landing_file": f.name}))
    if landing_dir.is_dir():
        ignored = [p.name for p in landing_dir.iterdir() if p.is_file() and not LANDING_NAME.match(p.name)]
        if ignored:
            context.log.warning(f"ignoring landing files not named YYYY-MM-DD.<csv|tsv|parquet|jsonl>: {ignored[:10]}")
    context.update_cursor(json.dumps(seen, sort_keys=True))
    if not requests:
        return dg.SkipReason(f"no new files in {landing_dir}")
    return requests
