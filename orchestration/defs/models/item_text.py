"""The item text table (DVC stage `item_text`, issue 19): every item's text encoded once by the frozen backbone."""

import json

import dagster as dg
import pyarrow.parquet as pq

from orchestration.pipeline import STAGE_POOL, DvcPipeline, lock_metadata
from orchestration.runners import StageRunner


@dg.asset(
    name="item_text",
    deps=["dataset_splits", "item_catalog"],
    group_name="models",
    kinds={"pytorch", "numpy"},
    description="One string per item (item_text.template: title, categories, brand, year) encoded once by the "
    "frozen pretrained backbone into an (n_items + 1, hidden) table aligned with the splits' item ids; "
    "items without text flagged (mask.npy). Read by a text or id+text item side.",
    pool=STAGE_POOL,
    retry_policy=dg.RetryPolicy(max_retries=1, delay=10),  # resumes: finished chunks are kept by content key
)
def item_text(context: dg.AssetExecutionContext, pipeline: DvcPipeline, stage_runner: StageRunner) -> dg.MaterializeResult:
    outs = pipeline.run_stage(context, "item_text", stage_runner)
    folder = pipeline.path(pipeline.params().item_text.out_dir)
    report = json.loads(pipeline.path("results/item_text.json").read_text())
    card = json.loads((folder / "card.json").read_text())
    texts = pq.read_table(folder / "texts.parquet", columns=["item_id", "text"]).slice(0, 5).to_pylist()
    return dg.MaterializeResult(
        metadata={
            "items": dg.MetadataValue.int(report["n_items"]),
            "with_text": dg.MetadataValue.int(report["with_text"]),
            "without_text": dg.MetadataValue.int(report["without_text"]),
            "hidden": dg.MetadataValue.int(report["hidden"]),
            "content_key": dg.MetadataValue.text(report["key"]),
            "seconds_per_1000_items": dg.MetadataValue.float(float(report["seconds_per_1000_items"] or 0.0)),
            "examples": dg.MetadataValue.json(texts),
            "content_hash": dg.MetadataValue.text(card["content_hash"]),
            **lock_metadata(outs, pipeline.root),
        }
    )
