"""Model assets: SASRec -> LLM teacher -> students, each one DVC stage run by the stage runner."""

import json

import dagster as dg

from orchestration.pipeline import STAGE_POOL, DvcPipeline, lock_metadata
from orchestration.plots import bar_chart
from orchestration.runners import StageRunner


def _model_asset(name: str, deps: list[str], description: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=name,
        deps=deps,
        group_name="models",
        kinds={"pytorch"},
        description=description,
        pool=STAGE_POOL,
        # a killed or crashed stage is retried once: training resumes from runs/<name>/<key>/last.pt
        retry_policy=dg.RetryPolicy(max_retries=1, delay=10),
    )
    def _asset(
        context: dg.AssetExecutionContext, pipeline: DvcPipeline, stage_runner: StageRunner
    ) -> dg.MaterializeResult:
        outs = pipeline.run_stage(context, name, stage_runner)
        info = json.loads(pipeline.path(f"models/{name}/train.json").read_text())
        card = json.loads(pipeline.path(f"models/{name}/card.json").read_text())
        curve = [(f"epoch {h['epoch']}", h["valid/ndcg@10"] * 1000) for h in info["history"] if "valid/ndcg@10" in h]
        return dg.MaterializeResult(
            metadata={
                "best_valid": dg.MetadataValue.json(info["best_valid"]),
                "train_seconds": dg.MetadataValue.float(round(info["train_seconds"], 1)),
                "seconds_per_epoch": dg.MetadataValue.float(round(info["seconds_per_epoch"], 1)),
                "parameters_total": dg.MetadataValue.int(info["parameters"]["total"]),
                "parameters_trainable": dg.MetadataValue.int(info["parameters"]["trainable"]),
                "stop_reason": dg.MetadataValue.text(str(info["stop_reason"])),
                "content_hash": dg.MetadataValue.text(card["content_hash"]),
                "parents": dg.MetadataValue.json([p["path"] for p in card["parents"]]),
                "valid_curve": dg.MetadataValue.md(bar_chart(curve, "validation NDCG@10 (×1000) per epoch")),
                **lock_metadata(outs, pipeline.root),
            }
        )

    return _asset


# item_text: read when an item side asks for text (sasrec.item_side / llm.item_side); a dependency as in dvc.yaml
sasrec = _model_asset(
    "sasrec", ["dataset_splits", "item_text"],
    "SASRec baseline (causal self-attention over item ids); its item-embedding table is the frozen "
    "item input of the LLM models.",
)
teacher = _model_asset(
    "teacher", ["sasrec", "dataset_splits", "item_text"],
    "LLM teacher: first N_t decoder layers of the backbone + LoRA, item vectors in, scores over all items out.",
)
student_nokd = _model_asset(
    "student_nokd", ["sasrec", "dataset_splits", "item_text"],
    "Ablation: the N_s-layer student trained on cross-entropy only (no distillation).",
)
student = _model_asset(
    "student", ["teacher", "sasrec", "dataset_splits", "item_text"],
    "SLMRec student: N_s layers distilled block-wise from the frozen teacher "
    "(direction + norm + multiple supervision).",
)
