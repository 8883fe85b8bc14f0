"""Cold-item evaluation (issue 19): can a model recommend an item it never saw in training?

    make_cold_splits("data/splits", "data/splits_cold", share=0.1, seed=2025)   # a split dir, trainable as any
    cold_evaluate("data/splits_cold", params, {"sasrec": "models/sasrec_cold", ...}, "results/cold.json")

The rule (COLD_RULE): a seeded `share` of the items (at least one) is drawn; every occurrence of them is
removed from the training sequences and so from every validation history (validation history = the
training sequence). The targets stay where they are: a validation or test target may be a cold item
(validation then scores it too, as any target); a test history keeps the validation target. Ranking is
over all items, the user's whole history excluded, as for every table. Test targets that are cold are
reported apart from the warm ones, for every model and for a popularity baseline (training counts: a
cold item has none, so popularity cannot rank it either).

An ID-only model (`id` item side) has never trained a cold item's vector as a target (only pushed it down
as a negative): its cold-target numbers are those of an untrained vector, and the table says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import Tensor, nn

from slmrec.config import Params
from slmrec.data.examples import make_eval_examples
from slmrec.data.sequences import (
    SEQUENCES_FILE, STATS_DIGEST, BuiltSplits, load_splits, read_split_tables, write_split_dir,
)  # fmt: skip
from slmrec.eval.evaluator import evaluate, protocol_text
from slmrec.eval.metrics import compute_metrics
from slmrec.lineage import atomic_write_text, write_card

COLD_FILE = "cold_items.json"
COLD_RULE = ("a seeded share of the items (numpy default_rng(seed).choice without replacement, at least one) "
             "removed from every training sequence and so from every validation history; targets kept")  # fmt: skip
REPORTED = ("ndcg@10", "hr@10", "ndcg@20", "hr@20", "mrr")


def pick_cold_items(n_items: int, share: float, seed: int) -> np.ndarray:
    """Sorted item ids (1..n_items) of the cold items."""
    if not 0 < share < 1:
        raise ValueError(f"cold share must be in (0, 1), got {share}")
    k = max(1, int(round(share * n_items)))
    return np.sort(np.random.default_rng(seed).choice(np.arange(1, n_items + 1), size=k, replace=False))


def _drop(lists: pa.ListArray, cold: np.ndarray) -> pa.ListArray:
    flat = pc.list_flatten(lists).to_numpy()
    parent = np.asarray(pc.list_parent_indices(lists))
    keep = ~np.isin(flat, cold)
    lengths = np.bincount(parent[keep], minlength=len(lists)).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat[keep].astype(np.int32)))


def make_cold_splits(src_dir: str, out_dir: str, share: float = 0.1, seed: int = 2025) -> dict:
    """Write a split dir with the cold items taken out of every training/validation input (COLD_RULE)."""
    tables, stats = read_split_tables(src_dir)
    n_items = stats["n_items"]
    cold = pick_cold_items(n_items, share, seed)
    train = _drop(tables["train"]["items"].combine_chunks(), cold)
    valid_target = tables["valid"]["target"].combine_chunks()
    test_history = pa.ListArray.from_arrays(  # train + the validation target, as load_splits checks
        pa.array(np.concatenate([[0], np.cumsum(pc.list_value_length(train).to_numpy() + 1)]).astype(np.int32)),
        pa.array(np.insert(pc.list_flatten(train).to_numpy(),
                           np.cumsum(pc.list_value_length(train).to_numpy()), valid_target.to_numpy())),
    )  # fmt: skip
    users = tables["train"]["user_idx"]
    new = {
        "train.parquet": pa.table({"user_idx": users, "items": train}),
        "valid.parquet": pa.table({"user_idx": users, "history": train, "target": valid_target}),
        "test.parquet": pa.table({"user_idx": users, "history": test_history, "target": tables["test"]["target"]}),
        "user_map.parquet": tables["user_map"],
        "item_map.parquet": tables["item_map"],
    }
    sequences = pq.read_table(Path(src_dir) / SEQUENCES_FILE)
    sequences = sequences.filter(pa.array(~np.isin(sequences["item_idx"].to_numpy(), cold)))
    test_target = tables["test"]["target"].to_numpy()
    info = {
        "rule": COLD_RULE, "share": share, "seed": seed, "n_cold_items": int(len(cold)),
        "cold_test_targets": int(np.isin(test_target, cold).sum()),
        "cold_valid_targets": int(np.isin(valid_target.to_numpy(), cold).sum()),
        "removed_train_interactions": int(len(pc.list_flatten(tables["train"]["items"])) - len(pc.list_flatten(train))),
        "source_dataset_hash": stats["dataset_hash"],
    }  # fmt: skip
    base = {k: v for k, v in stats.items()
            if k not in ("files", "dataset_hash", "contracts", "sequences_sha256", STATS_DIGEST)}  # fmt: skip
    base["cold"] = info
    base["n_interactions"] = int(stats["n_interactions"]) - info["removed_train_interactions"]
    written = write_split_dir(BuiltSplits(new, sequences, base), {"cold_split": info}, out_dir)
    atomic_write_text(Path(out_dir) / COLD_FILE, json.dumps({**info, "items": cold.tolist()}, indent=1) + "\n")
    write_card(out_dir, "splits", params={"cold": {"share": share, "seed": seed}}, parents=[src_dir],
               metrics={"n_users": written["n_users"], "n_items": n_items, "n_cold_items": info["n_cold_items"],
                        "dataset_hash": written["dataset_hash"]}, reproducible=True)  # fmt: skip
    return {**info, "dataset_hash": written["dataset_hash"]}


def cold_items_of(split_dir: str | Path) -> np.ndarray:
    path = Path(split_dir) / COLD_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: not a cold split dir (make it with `slmrec cold-split`)")
    return np.asarray(json.loads(path.read_text())["items"], dtype=np.int64)


class Popularity(nn.Module):
    """Scores = the item's number of training interactions (cold items: 0)."""

    def __init__(self, train: list[list[int]], n_items: int):
        super().__init__()
        self.n_items = n_items
        flat = np.fromiter((i for seq in train for i in seq), dtype=np.int64)
        self.register_buffer("counts", torch.from_numpy(np.bincount(flat, minlength=n_items + 1).astype(np.float32)))

    def full_sort_predict(self, batch: dict[str, Tensor]) -> Tensor:
        scores = self.counts.expand(len(batch["target"]), -1).clone()  # (B, N+1)
        scores[:, 0] = float("-inf")
        return scores


def _subset(ranks: np.ndarray, rows: np.ndarray, ks) -> dict:
    return {k: round(v, 6) for k, v in compute_metrics(ranks[rows], ks).items() if k in REPORTED} if rows.any() else {}


def cold_evaluate(
    split_dir: str,
    params: Params,
    models: dict[str, str],
    out_json: str | None = None,
    out_md: str | None = None,
    log: Callable = print,
) -> dict:
    """Test metrics on cold and on warm targets, per model and for popularity (full ranking, history excluded)."""
    from slmrec.models.checkpoint import load_model
    from slmrec.models.llmrec import LLMRec

    splits = load_splits(split_dir)
    cold = cold_items_of(split_dir)
    target = np.array([t for _, t in splits.test])
    is_cold = np.isin(target, cold)
    ks = params.eval.ks
    cfg = params.eval
    rows = {"popularity": (Popularity(splits.train, splits.n_items), "none (training counts)", 1)}
    for name, model_dir in models.items():
        model = load_model(Path(model_dir) / "model.pt")
        if isinstance(model, LLMRec):
            model.merge_for_inference()
        side = model.cfg.item_side
        rows[name] = (model, side, model.cfg.max_len)
    out: dict = {"protocol": protocol_text(cfg), "rule": COLD_RULE, "n_users": len(target),
                 "cold_targets": int(is_cold.sum()), "warm_targets": int((~is_cold).sum()),
                 "n_cold_items": int(len(cold)), "dataset_hash": splits.dataset_hash, "models": {}}  # fmt: skip
    for name, (model, side, max_len) in rows.items():
        examples = make_eval_examples(splits.test, max_len)
        res = evaluate(model, examples, cfg, batch_size=params.train_llm.eval_batch_size, device="cpu")
        entry = {"item_side": side, "cold": _subset(res.ranks, is_cold, ks), "warm": _subset(res.ranks, ~is_cold, ks),
                 "all": _subset(res.ranks, np.ones_like(is_cold), ks),
                 "cold_median_rank": float(np.median(res.ranks[is_cold])) if is_cold.any() else None}  # fmt: skip
        out["models"][name] = entry
        log(f"{name} ({side}): cold ndcg@10 {entry['cold'].get('ndcg@10', float('nan')):.4f} "
            f"hr@10 {entry['cold'].get('hr@10', float('nan')):.4f}; warm ndcg@10 {entry['warm'].get('ndcg@10', 0):.4f}")
    table = cold_table(out)
    if out_json:
        atomic_write_text(out_json, json.dumps(out, indent=2) + "\n")
    if out_md:
        atomic_write_text(out_md, table)
    out["table"] = table
    return out


def cold_table(result: dict) -> str:
    lines = [
        f"Cold items: {result['n_cold_items']} items ({result['rule']}); {result['cold_targets']} of "
        f"{result['n_users']} test targets are cold. Protocol: {result['protocol']}; dataset {result['dataset_hash'][:8]}.",
        "",
        "| model | item side | cold NDCG@10 | cold HR@10 | cold median rank | warm NDCG@10 | warm HR@10 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, e in result["models"].items():
        if "text" in e["item_side"]:
            note = ""
        elif e["item_side"].startswith("none"):
            note = " (an unseen item has no count: ranked last)"
        else:  # an ID model scores an unseen item with the vector it was initialised with, never trained
            note = " (no text: an unseen item keeps its untrained vector)"
        lines.append(f"| {name}{note} | {e['item_side']} | {e['cold'].get('ndcg@10', float('nan')):.4f} | "
                     f"{e['cold'].get('hr@10', float('nan')):.4f} | {e['cold_median_rank'] or float('nan'):.0f} | "
                     f"{e['warm'].get('ndcg@10', float('nan')):.4f} | {e['warm'].get('hr@10', float('nan')):.4f} |")
    return "\n".join(lines) + "\n"


__all__ = ["pick_cold_items", "make_cold_splits", "cold_items_of", "cold_evaluate", "cold_table", "Popularity"]
