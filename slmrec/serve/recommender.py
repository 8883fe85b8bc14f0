"""The one inference path: a model directory in, top-K original item ids with scores out.

    rec = Recommender.load("models/student")                 # maps + DuckDB store found through the card
    rec.recommend_history(["242", "302"], k=10)              # -> Answer (a history given by the caller)
    rec.recommend_users(["196", "186"], k=10)                # -> DataFrame user_id, rank, item_id, score, model
    rec.answer([Query(k=10, user_id="196"), Query(k=5, items=[...])])   # what the HTTP service calls

Batch scoring (`slmrec recommend`, the `recommendations` asset), the HTTP service and the tests all
call `answer` / `top_k`, and `top_k` ranks exactly as evaluation does: the examples are built with
`make_eval_examples` (the model reads the last `max_len` items, the whole history is kept), the
scores come from `model.full_sort_predict`, and the candidates lose the items of
`excluded_items(batch, eval_cfg)` through `history_mask` — the protocol's one exclusion rule
(slmrec/eval/evaluator.py). Ties go to the lower item index (a stable sort), so the order is
deterministic.

The model is loaded as its checkpoint describes it (class, config, dtype and device: `llm.device`
/ `llm.dtype`, "auto" resolving on this machine), LoRA merged and the instruction prefix cached
(`LLMRec.merge_for_inference`). `device=` overrides the stored device (e.g. serve on CPU what was
trained on a GPU).

New catalogue items (`serve.new_items`, issue 19): under `text` (the default), a model whose item side reads
text also scores the items of the DuckDB `items` table that it never saw (added after training), through
their text encoded at load like its own items (slmrec/serve/new_items.py); no retraining. They are picked
up when the model is loaded (a server reload, each batch job). An ID-only model serves its training
catalogue (`describe()["new_items"]` says so). `ignore` serves the training catalogue with every model.

Cold start (`serve.cold_start`): a user the store does not know, or a history with no item the
model knows, is an error (UnknownUser / EmptyHistory) under `error`, and gets the most popular
items of the splits (every interaction the model was trained and evaluated on), flagged
`fallback="popular"`, under `popular`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from slmrec.config import EvalConfig, SequenceConfig, from_dict
from slmrec.data.examples import make_eval_examples, to_device
from slmrec.data.sequences import load_splits
from slmrec.eval.evaluator import excluded_items, history_mask
from slmrec.lineage import read_card
from slmrec.models.base import Recommender as Model
from slmrec.models.inference import prepare_for_inference
from slmrec.models.llmrec import LLMRec
from slmrec.serve.history import HistoryStore
from slmrec.serve.new_items import NEW_ITEMS, NewItems, add_catalogue_items, text_side_of
from slmrec.serve.sources import ModelSources, resolve_sources
from slmrec.models.checkpoint import build_model, load_checkpoint

MODEL_FILE = "model.pt"
COLD_START = ("error", "popular")
ANONYMOUS = "anonymous"
# make_eval_examples wants a (history, target) pair; serving has no target. Any valid id will do:
# the target only fills `targets`, which scoring never reads (full_sort_predict uses input_ids).
_NO_TARGET = 1
RECOMMENDATION_COLUMNS = ["user_id", "rank", "item_id", "score", "model"]


class UnknownUser(LookupError):
    def __init__(self, user_id: str):
        super().__init__(f"unknown user {user_id!r}: no interactions in the store")
        self.user_id = user_id


class EmptyHistory(LookupError):
    def __init__(self, user_id: str, ignored: list[str]):
        what = f"user {user_id!r} has" if user_id != ANONYMOUS else "the history has"
        super().__init__(f"{what} no item the model knows ({len(ignored)} unknown item(s) ignored)")
        self.user_id, self.ignored = user_id, ignored


@dataclass
class Query:
    """One request: a known user (history from the store) or a caller's history (`items`)."""

    k: int
    user_id: str | None = None
    items: list[str] | None = None
    as_of: int | None = None  # a known user's history before this time (UTC seconds): point-in-time batch jobs


@dataclass
class Answer:
    user_id: str  # ANONYMOUS for a caller's history
    items: list[str]  # original item ids, best first
    scores: list[float]
    model: str  # content hash of the model directory
    fallback: str | None  # None, or "popular"
    ignored_items: list[str] = field(default_factory=list)  # history items the model does not know
    history_len: int = 0  # items in the history (known + unknown)
    k: int = 0


def load_serving_model(model_pt: str | Path, device: str | None = None, precision: str = "fp32",
                       data: bytes | None = None) -> Model:
    """The checkpoint's model on its stored device/dtype (or `device`), in eval mode, LoRA merged, its LLM trunk
    in `precision` (serve.precision: fp32 | bf16 | int8; only LLM models have a trunk to convert).
    data: the checkpoint's bytes when the caller has read (and hashed) them."""
    ckpt = load_checkpoint(model_pt, data=data)
    if device is not None and "llm" in ckpt["model_config"]:
        ckpt["model_config"]["llm"]["device"] = device  # the backbone is built there, in the stored dtype
    model = build_model(ckpt)
    if device is not None:
        model.to(device)
    if isinstance(model, LLMRec):
        prepare_for_inference(model, precision)  # merges LoRA, caches the instruction prefix
    elif precision != "fp32":
        raise ValueError(f"serve.precision {precision!r} applies to LLM models; {model_pt} holds a "
                         f"{type(model).__name__}: serve it with precision fp32")
    return model.eval()


def stable_top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and values of the k best scores per row (B, N) -> (B, k), (B, k), ties to the lower index.

    Exactly the first k columns of a stable descending sort, at the cost of `torch.topk` (O(N) a row, not a
    sort of all N): topk(k + 1) gives the candidates, which are re-ordered by (score desc, index asc); a
    row whose k-th and (k+1)-th scores tie (the set itself depends on the tie rule) falls back to the full
    stable sort.
    """
    n = scores.shape[1]
    k = min(k, n)
    m = min(k + 1, n)
    vals, idx = torch.topk(scores, m, dim=1)  # (B, m) descending; the order among equal scores is unspecified
    idx, perm = torch.sort(idx, dim=1)  # by index first ...
    vals, perm = torch.sort(vals.gather(1, perm), dim=1, descending=True, stable=True)  # ... then by score
    idx = idx.gather(1, perm)
    if m > k:
        ties = (vals[:, k - 1] == vals[:, k]).nonzero().squeeze(1)  # (T,)
        if len(ties):
            full_vals, full_idx = torch.sort(scores[ties], dim=1, descending=True, stable=True)
            vals[ties, :k], idx[ties, :k] = full_vals[:, :k], full_idx[:, :k]
    return idx[:, :k], vals[:, :k]


def canary(rec: "Recommender", k: int) -> str | None:
    """None when the model answers a real history sanely; else what is wrong (a reload refuses such a model).

    The history: the first user of the store with an item the model knows (else the most popular items).
    Sane: min(k, items left) items, finite scores that do not increase, no item of the history."""
    history = None
    for user in rec.history.user_ids()[:100]:
        items = rec.history.get(user)
        if items is not None and rec.resolve(items)[0]:
            history = list(items)
            break
    if history is None:
        history = [rec.item_ids[i] for i, _ in rec.popularity[:5]]
    known, _ = rec.resolve(history)
    if not known:
        return "canary: no history with an item the model knows"
    k = min(k, rec.model.n_items - len(set(known)))
    (answer,) = rec.answer([Query(k=k, items=history)])
    if not isinstance(answer, Answer):
        return f"canary: {answer}"
    scores = answer.scores
    if len(answer.items) != k:
        return f"canary: {len(answer.items)} items for k={k} (non-finite scores?)"
    if not all(math.isfinite(s) for s in scores) or any(a < b for a, b in zip(scores, scores[1:])):
        return f"canary: scores not finite and non-increasing: {scores[:5]}"
    if set(answer.items) & set(history):
        return f"canary: recommends items of the history {sorted(set(answer.items) & set(history))[:5]}"
    return None


def _model_device(model: Model) -> torch.device:
    return next(model.parameters()).device


class Recommender:
    """A loaded model with its item map, the users' histories and the exclusion protocol."""

    def __init__(
        self,
        model: Model,
        sources: ModelSources,
        item_ids: list[str | None],
        popularity: list[tuple[int, float]],
        history: HistoryStore,
        eval_cfg: EvalConfig,
        cold_start: str = "error",
        new_items: NewItems | None = None,
    ):
        if cold_start not in COLD_START:
            raise ValueError(f"serve.cold_start must be one of {COLD_START}, got {cold_start!r}")
        if len(item_ids) != model.n_items + 1:
            raise ValueError(
                f"{sources.splits_dir}: {len(item_ids) - 1} items, the model scores {model.n_items}: wrong splits"
            )
        self.model, self.sources, self.eval_cfg, self.cold_start = model, sources, eval_cfg, cold_start
        self.item_ids = item_ids  # index -> original id; [0] = padding
        self.item_index = {item: i for i, item in enumerate(item_ids) if i > 0}
        self.popularity = popularity  # (item index, share of interactions), most popular first
        self.history = history
        self.new_items = new_items or NewItems()  # catalogue items added at load (their text read), skipped ones
        self.device = _model_device(model)
        self.max_len = model.cfg.max_len
        self.loaded_at = time.time()

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        splits: str | Path | None = None,
        db: str | Path | None = None,
        *,
        root: str | Path = ".",
        device: str | None = None,
        eval_cfg: EvalConfig | None = None,
        cold_start: str = "error",
        precision: str = "fp32",
        new_items: str = "text",
        backbone=None,
    ) -> "Recommender":
        """new_items: `text` | `ignore` (module doc); backbone (tests): the text encoder for new items."""
        if new_items not in NEW_ITEMS:
            raise ValueError(f"serve.new_items must be one of {NEW_ITEMS}, got {new_items!r}")
        # the checkpoint is read once: the content hash is computed on the bytes that are deserialised
        read_card(model_dir)  # a clear error for a folder that is not a model artifact, before reading its files
        data = (Path(model_dir) / MODEL_FILE).read_bytes()
        sources = resolve_sources(model_dir, splits, db, root, digests={MODEL_FILE: hashlib.sha256(data).hexdigest()})
        split_data = load_splits(sources.splits_dir)  # hash-checked
        seq_cfg = from_dict(SequenceConfig, json.loads((sources.splits_dir / "stats.json").read_text())["config"])
        model = load_serving_model(sources.model_dir / MODEL_FILE, device, precision, data=data)
        counts = Counter(i for history, target in split_data.test for i in (*history, target))
        total = sum(counts.values())
        popularity = [(i, n / total) for i, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        item_ids, added = list(split_data.item_ids), NewItems()
        if new_items == "text" and text_side_of(model) is not None:
            if sources.item_text_dir is None:
                raise ValueError(f"{model_dir}/card.json names no item_text parent, but the model reads text: "
                                 "cannot encode new catalogue items (serve.new_items: ignore)")
            added = add_catalogue_items(model, item_ids, sources.db, sources.item_text_dir, backbone=backbone)
            item_ids += added.added
        return cls(model, sources, item_ids, popularity, HistoryStore(sources.db, seq_cfg),
                   eval_cfg or EvalConfig(), cold_start, added)

    @property
    def model_hash(self) -> str:
        return self.sources.model_hash

    # ------------------------------------------------------------------ scoring

    def resolve(self, items: list[str]) -> tuple[list[int], list[str]]:
        """Original ids -> (model indices of the known ones, in order; the unknown ones)."""
        known, unknown = [], []
        for item in items:
            idx = self.item_index.get(str(item))
            if idx is None:
                unknown.append(str(item))
            else:
                known.append(idx)
        return known, unknown

    @torch.inference_mode()
    def top_k(self, histories: list[list[int]], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Item indices (B, k) and scores (B, k), best first, of the non-empty `histories` (model indices).

        Excluded candidates (the whole history, padding) score -inf; a row whose remaining candidates
        are fewer than k ends in -inf entries, which the callers drop.
        """
        if not histories:
            raise ValueError("top_k: no histories")
        if any(not h for h in histories):
            raise ValueError("top_k: empty history (the cold-start rule answers those, not the model)")
        examples = make_eval_examples([(h, _NO_TARGET) for h in histories], self.max_len)
        batch = to_device(examples.batch(torch.arange(len(histories))), self.device)
        scores = self.model.full_sort_predict(batch).float()  # (B, N+1), column 0 = -inf
        history = excluded_items(batch, self.eval_cfg)  # (B, H) whole histories, or None
        if history is not None:
            scores = scores.masked_fill(history_mask(history, scores.shape[1]), float("-inf"))
        order, ranked = stable_top_k(scores, min(k, scores.shape[1] - 1))
        return order.cpu(), ranked.cpu()  # (B, k), (B, k)

    def _popular(self, user_id: str, k: int, history_len: int, ignored: list[str]) -> Answer:
        top = self.popularity[:k]
        return Answer(user_id, [self.item_ids[i] for i, _ in top], [float(s) for _, s in top], self.model_hash,
                      "popular", ignored, history_len, k)

    def answer(self, queries: list[Query]) -> list[Answer | UnknownUser | EmptyHistory]:
        """Answer a batch of queries with one forward pass; per query an Answer or the cold-start error."""
        out: list = [None] * len(queries)
        scored: list[tuple[int, str, list[int], list[str], int]] = []
        for n, q in enumerate(queries):
            if q.k < 1:
                raise ValueError(f"k must be >= 1, got {q.k}")
            if q.user_id is not None:
                user, items = str(q.user_id), self.history.get(str(q.user_id), q.as_of)
                if items is None:
                    out[n] = self._popular(user, q.k, 0, []) if self.cold_start == "popular" else UnknownUser(user)
                    continue
            else:
                user, items = ANONYMOUS, list(q.items or [])
            known, unknown = self.resolve(items)
            if not known:
                out[n] = (self._popular(user, q.k, len(items), unknown) if self.cold_start == "popular"
                          else EmptyHistory(user, unknown))
                continue
            scored.append((n, user, known, unknown, len(items)))
        if scored:
            idx, scores = self.top_k([s[2] for s in scored], max(queries[s[0]].k for s in scored))
            for row, (n, user, _, unknown, history_len) in enumerate(scored):
                k = queries[n].k
                keep = torch.isfinite(scores[row, :k])
                items = [self.item_ids[i] for i in idx[row, :k][keep].tolist()]
                out[n] = Answer(user, items, scores[row, :k][keep].tolist(), self.model_hash, None, unknown,
                                history_len, k)
        return out

    # ------------------------------------------------------------------ conveniences (batch job, replay)

    def recommend_history(self, item_ids: list[str], k: int) -> Answer:
        """Top-k for a caller's history (original ids, oldest first); raises EmptyHistory under `error`."""
        (result,) = self.answer([Query(k=k, items=[str(i) for i in item_ids])])
        if isinstance(result, Exception):
            raise result
        return result

    def recommend_users(self, user_ids: list[str], k: int, batch_size: int = 256, as_of: int | None = None) -> pd.DataFrame:
        """One row per (user, rank): user_id, rank (1-based), item_id, score, model.

        Unknown users are an error under cold_start `error` (ValueError naming them); users whose
        history holds no item the model knows are left out and listed in `df.attrs["skipped"]`.
        as_of (UTC seconds): each user's history as of that time (point-in-time batch recommendations).
        With `popular` both get the popularity list (`df.attrs["fallback"]` lists them).
        """
        rows, skipped, unknown, fallback = [], [], [], []
        users = [str(u) for u in user_ids]
        for start in range(0, len(users), batch_size):
            chunk = users[start : start + batch_size]
            for user, result in zip(chunk, self.answer([Query(k=k, user_id=u, as_of=as_of) for u in chunk])):
                if isinstance(result, UnknownUser):
                    unknown.append(user)
                elif isinstance(result, EmptyHistory):
                    skipped.append(user)
                else:
                    if result.fallback:
                        fallback.append(user)
                    rows += [(user, r + 1, item, score, result.model)
                             for r, (item, score) in enumerate(zip(result.items, result.scores))]
        if unknown:
            raise ValueError(f"{len(unknown)} unknown user(s) (no interactions in {self.sources.db}): {unknown[:10]}")
        df = pd.DataFrame(rows, columns=RECOMMENDATION_COLUMNS)
        df = df.astype({"user_id": str, "rank": "int32", "item_id": str, "score": "float64", "model": str})
        df.attrs.update(skipped=skipped, fallback=fallback)
        return df

    def _dtype(self) -> torch.dtype:
        """The compute dtype: the LLM trunk's (the maps and score head stay float32), else the weights'."""
        if isinstance(self.model, LLMRec):
            return self.model.base.embed_tokens.weight.dtype
        return next(self.model.parameters()).dtype

    def describe(self) -> dict:
        """The served model for GET /model: its card's identity, lineage hashes and metrics. No file system
        paths and no training params (they are for operators: `slmrec lineage`, the card on disk)."""
        card = self.sources.card
        return {
            "content_hash": self.model_hash,
            "artifact": card.get("artifact"),
            "name": self.sources.model_dir.name,
            "parents": [{k: p.get(k) for k in ("kind", "artifact", "content_hash")} for p in card.get("parents", [])],
            "metrics": card.get("metrics", {}),
            "git_commit": card.get("git_commit"),
            "created_at": card.get("created_at"),
            "model_class": type(self.model).__name__,
            "n_items": self.model.n_items,
            "device": str(self.device),
            "dtype": str(self._dtype()).removeprefix("torch."),
            "history_users": self.history.n_users,
            "cold_start": self.cold_start,
            "new_items": {"added": len(self.new_items.added), "skipped": len(self.new_items.skipped),
                          "reads_text": text_side_of(self.model) is not None},
            "exclude_history": self.eval_cfg.exclude_history,
            "loaded_at": self.loaded_at,
        }
