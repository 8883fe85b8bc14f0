"""The one inference path: lineage, histories from DuckDB, the evaluator's exclusion rule, cold start."""

import json
import shutil

import pytest
import torch

from slmrec.config import EvalConfig
from slmrec.data.examples import make_eval_examples
from slmrec.data.ingest import ingest
from slmrec.data.sequences import load_splits
from slmrec.eval.evaluator import evaluate, excluded_items, history_mask
from slmrec.serve import ANONYMOUS, EmptyHistory, Query, Recommender, UnknownUser
from slmrec.serve.recommender import load_serving_model

from serve_helpers import DAY0, user_events

K = 10


def evaluator_top_k(model, history: list[int], k: int) -> list[int]:
    """Top-k item indices as the evaluator scores them: full_sort_predict, whole history excluded."""
    examples = make_eval_examples([(history, 1)], model.cfg.max_len)
    batch = examples.batch(torch.arange(1))
    with torch.inference_mode():
        scores = model.full_sort_predict(batch).float()  # (1, N+1)
        scores = scores.masked_fill(history_mask(excluded_items(batch, EvalConfig()), scores.shape[1]), float("-inf"))
    order = sorted(range(1, scores.shape[1]), key=lambda i: (-scores[0, i].item(), i))
    return [i for i in order if scores[0, i] > float("-inf")][:k]


@pytest.fixture(scope="module")
def rec(pipeline):
    return Recommender.load(pipeline / "models" / "student")


def test_lineage_finds_splits_and_store(pipeline, rec):
    card = json.loads((pipeline / "models/student/card.json").read_text())
    assert rec.model_hash == card["content_hash"]
    assert rec.sources.splits_dir == pipeline / "splits"
    assert rec.sources.db == pipeline / "warehouse.duckdb"
    assert rec.describe()["model_class"] == "LLMRec" and rec.model.merged  # LoRA merged, prefix cached
    assert (rec.describe()["device"], rec.describe()["dtype"]) == ("cpu", "float32")  # llm.device/dtype auto, on CPU


def test_same_top_k_as_the_evaluator(pipeline, rec):
    """Posted test histories give the evaluator's top-k, and evaluate()'s target ranks agree with them."""
    splits = load_splits(pipeline / "splits")
    model = load_serving_model(pipeline / "models/student/model.pt")
    users = range(0, splits.n_users, 5)
    result = evaluate(model, make_eval_examples([splits.test[u] for u in users], model.cfg.max_len), EvalConfig(
        sampled_negatives=0))
    for row, u in enumerate(users):
        history, target = splits.test[u]
        expected = evaluator_top_k(model, history, K)
        answer = rec.recommend_history([splits.item_ids[i] for i in history], K)
        assert answer.items == [splits.item_ids[i] for i in expected]
        assert answer.user_id == ANONYMOUS and answer.fallback is None and answer.ignored_items == []
        assert answer.scores == sorted(answer.scores, reverse=True)
        assert not set(answer.items) & {splits.item_ids[i] for i in history}  # the whole history is excluded
        if target in expected:  # the evaluator's (pessimistic) rank of the target = its place in the list
            assert result.ranks[row] == expected.index(target) + 1


def test_sasrec_serves_through_the_same_path(pipeline):
    splits = load_splits(pipeline / "splits")
    rec = Recommender.load(pipeline / "models" / "sasrec")
    history, _ = splits.test[3]
    expected = evaluator_top_k(rec.model, history, K)
    assert rec.recommend_history([splits.item_ids[i] for i in history], K).items == [splits.item_ids[i] for i in expected]
    assert rec.describe()["model_class"] == "SASRec"


def test_user_history_comes_from_the_store_in_sequence_order(pipeline, rec):
    splits = load_splits(pipeline / "splits")
    for u in (0, 7, 13):
        user = f"u{u}"
        row = splits.user_ids.index(user)
        history, target = splits.test[row]
        full = [splits.item_ids[i] for i in history + [target]]
        assert rec.history.get(user) == full  # train + valid + test, the splits' order (ties by row order)
        (answer,) = rec.answer([Query(k=K, user_id=user)])
        assert answer.items == [splits.item_ids[i] for i in evaluator_top_k(rec.model, history + [target], K)]
        assert answer.user_id == user and answer.history_len == len(full)
    # u0's first two events share a timestamp: the file's row order decides, as in the splits
    assert rec.history.get("u0")[:2] == [e[1] for e in user_events(0)[:2]]


def test_days_ingested_after_training_count(pipeline, tmp_path):
    """A later landing file reaches the history after a refresh; its unknown item is reported, not scored."""
    db = tmp_path / "warehouse.duckdb"
    shutil.copy(pipeline / "warehouse.duckdb", db)
    rec = Recommender.load(pipeline / "models" / "student", db=db)
    before = rec.history.get("u5")
    late = DAY0 + 40 * 86400
    (tmp_path / "1998-02-10.csv").write_text(f"user_id,item_id,ts\nu5,m3,{late}\nu5,new-item,{late + 1}\n"
                                             f"newcomer,m4,{late}\n")
    ingest("events", str(tmp_path / "1998-02-10.csv"), str(db))
    assert rec.history.refresh_if_changed() and not rec.history.refresh_if_changed()
    assert rec.history.get("u5") == before + ["m3", "new-item"]
    (answer,) = rec.answer([Query(k=K, user_id="u5")])
    assert answer.ignored_items == ["new-item"] and answer.history_len == len(before) + 2
    assert "m3" not in answer.items  # now part of the history: excluded
    (newcomer,) = rec.answer([Query(k=3, user_id="newcomer")])  # a user unknown to the splits, known to the store
    assert newcomer.fallback is None and len(newcomer.items) == 3 and "m4" not in newcomer.items


def test_cold_start_rules(pipeline, rec):
    unknown, empty = rec.answer([Query(k=5, user_id="nobody"), Query(k=5, items=["x", "y"])])
    assert isinstance(unknown, UnknownUser) and "nobody" in str(unknown)
    assert isinstance(empty, EmptyHistory) and empty.ignored == ["x", "y"]
    with pytest.raises(EmptyHistory):
        rec.recommend_history([], 5)
    popular = Recommender.load(pipeline / "models" / "student", cold_start="popular")
    a, b = popular.answer([Query(k=5, user_id="nobody"), Query(k=5, items=["x"])])
    assert a.fallback == b.fallback == "popular" and a.items == b.items and len(a.items) == 5
    assert b.ignored_items == ["x"] and a.scores == sorted(a.scores, reverse=True)


def test_k_larger_than_the_candidates(rec):
    history = [f"m{i}" for i in range(1, 26)]  # 25 of 30 items: 5 candidates left
    answer = rec.recommend_history(history, 20)
    assert len(answer.items) == 5 and set(answer.items) == {f"m{i}" for i in range(26, 31)}


def test_exclusion_follows_the_protocol_switch(pipeline):
    rec = Recommender.load(pipeline / "models" / "student", eval_cfg=EvalConfig(exclude_history=False))
    history = [f"m{i}" for i in range(1, 26)]
    assert len(rec.recommend_history(history, 30).items) == 30  # nothing excluded: every item ranked


def test_recommend_users_frame(rec):
    df = rec.recommend_users(["u1", "u2"], 4)
    assert list(df.columns) == ["user_id", "rank", "item_id", "score", "model"]
    assert df["rank"].tolist() == [1, 2, 3, 4] * 2 and set(df["model"]) == {rec.model_hash}
    with pytest.raises(ValueError, match="nobody"):
        rec.recommend_users(["u1", "nobody"], 4)


def test_refuses_a_tampered_model_or_foreign_splits(pipeline, tmp_path):
    model = tmp_path / "student"
    shutil.copytree(pipeline / "models" / "student", model)
    Recommender.load(model)  # an intact copy serves
    with open(model / "train.json", "a") as f:
        f.write(" ")
    with pytest.raises(ValueError, match="modified after training"):
        Recommender.load(model)
    splits = tmp_path / "splits"
    shutil.copytree(pipeline / "splits", splits)
    (splits / "extra.txt").write_text("x")  # another dataset, as far as the hash can tell
    with pytest.raises(ValueError, match="item ids are not the model's"):
        Recommender.load(pipeline / "models" / "student", splits=splits)


def test_store_missing_is_a_clear_error(pipeline, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        Recommender.load(pipeline / "models" / "student", db=tmp_path / "none.duckdb")


def test_serving_precision_int8_keeps_the_lists_and_refuses_non_llm_models(pipeline, rec):
    """serve.precision int8: the trunk's Linear layers quantized, lists close to fp32; SASRec has no trunk."""
    int8 = Recommender.load(pipeline / "models" / "student", precision="int8")
    assert "quantized" in type(int8.model.base.layers[0].mlp.down_proj).__module__
    assert "quantized" not in type(rec.model.base.layers[0].mlp.down_proj).__module__
    splits = load_splits(pipeline / "splits")
    overlap = []
    for u in range(0, splits.n_users, 3):
        ids = [splits.item_ids[i] for i in splits.test[u][0]]
        a, b = rec.recommend_history(ids, K).items, int8.recommend_history(ids, K).items
        overlap.append(len(set(a) & set(b)) / K)
    assert sum(overlap) / len(overlap) >= 0.8, overlap
    with pytest.raises(ValueError, match="applies to LLM models"):
        Recommender.load(pipeline / "models" / "sasrec", precision="int8")
