"""Champion / challenger: a retrained candidate against the model that is serving, on the same fresh data.

    examples = validation_examples(load_splits("data/splits"))             # (history ids, target id) per user
    decision = challenge(candidate_rec, champion_rec, examples, ["ndcg@10", "mrr"], margin=0.005)
    decision["promote"]      # True when the candidate is non-inferior to the champion on every metric

Both models are scored as they are (or will be) served: loaded by `Recommender.load` (the serving
loader, its precision, its history exclusion) and fed original item ids, so two models trained on
different splits (new users, new items, another item index) are compared on the same users and the
same targets. A target a model does not know (an item new since it was trained) is ranked last
(n_items + 1): the champion pays for what it cannot recommend, as it would in production.

The decision: per metric, the paired-bootstrap 95% CI [lo, hi] over users of candidate − champion.
Non-inferior when lo > −margin × the champion's value (promotion.non_inferiority_margin, a fraction,
like promotion.max_regression); the candidate replaces the champion only when it is non-inferior on
every metric. Everything (means, CIs, threshold, users, decision) goes into the record.
"""

from __future__ import annotations

import numpy as np
import torch

from slmrec.data.examples import make_eval_examples, to_device
from slmrec.eval.evaluator import excluded_items, history_mask
from slmrec.eval.metrics import full_ranks, paired_bootstrap, per_user_metric
from slmrec.serve.recommender import Recommender


def validation_examples(splits) -> list[tuple[list[str], str]]:
    """The validation split of `load_splits(...)` in original ids: (history, target) per user."""
    ids = splits.item_ids
    return [([ids[i] for i in history], ids[target]) for history, target in splits.valid]


@torch.inference_mode()
def serving_ranks(rec: Recommender, examples: list[tuple[list[str], str]], batch_size: int = 256) -> np.ndarray:
    """(U,) 1-based full-ranking rank of each target, scored through the served model and its exclusion rule."""
    n = rec.model.n_items
    ranks = np.full(len(examples), n + 1, dtype=np.int64)  # unknown target or empty history: ranked last
    rows, pairs = [], []
    for u, (history, target) in enumerate(examples):
        known, _ = rec.resolve(history)
        target_idx = rec.item_index.get(str(target))
        if known and target_idx is not None:
            rows.append(u)
            pairs.append((known, target_idx))
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        examples_b = make_eval_examples(chunk, rec.max_len)
        batch = to_device(examples_b.batch(torch.arange(len(chunk))), rec.device)
        scores = rec.model.full_sort_predict(batch).float()  # (B, N+1)
        history = excluded_items(batch, rec.eval_cfg)  # (B, H) or None
        exclude = history_mask(history, scores.shape[1]) if history is not None else None
        ranks[rows[start : start + len(chunk)]] = full_ranks(scores, batch["target"], exclude).cpu().numpy()
    return ranks


def served_precision(model_dir, precision: str) -> str:
    """serve.precision applies to LLM trunks; SASRec is served in fp32 (its card's artifact says which)."""
    from slmrec.lineage import read_card

    return "fp32" if read_card(model_dir).get("artifact") == "sasrec" else precision


def challenge(candidate: Recommender, champion: Recommender, examples: list[tuple[list[str], str]],
              metrics: list[str], margin: float, n_boot: int = 1000, seed: int = 0) -> dict:
    """The champion/challenger decision with its evidence (see the module docstring)."""
    if margin < 0:
        raise ValueError(f"non-inferiority margin must be >= 0, got {margin}")
    if not examples:
        raise ValueError("champion/challenger: no validation users to compare on")
    cand, champ = serving_ranks(candidate, examples), serving_ranks(champion, examples)
    rows = []
    for metric in metrics:
        ci = paired_bootstrap(cand, champ, metric, n_boot=n_boot, seed=seed)
        champion_value = float(per_user_metric(champ, metric).mean())
        threshold = -margin * champion_value
        rows.append({"metric": metric, "candidate": float(per_user_metric(cand, metric).mean()),
                     "champion": champion_value, **ci, "threshold": threshold, "non_inferior": ci["lo"] > threshold})
    return {"candidate": candidate.model_hash, "champion": champion.model_hash, "users": len(examples),
            "margin": margin, "rows": rows, "promote": all(r["non_inferior"] for r in rows),
            "protocol": "validation split of the candidate's splits, full ranking, history excluded, served precision, "
                        "paired bootstrap 95% CI over users of candidate - champion; unknown targets ranked last"}
