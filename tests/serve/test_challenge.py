"""Champion / challenger (issue 17): a candidate against the serving model on the same fresh validation users,
scored through the serving loader; the cheapest_not_worse policy."""

import copy

import pytest
import torch

from orchestration.defs.deployment.assets import champion_challenger
from orchestration.pipeline import DvcPipeline
from orchestration.promotion import cheapest_not_worse, choose_candidate
from slmrec.config import PromotionConfig
from slmrec.data.sequences import load_splits
from slmrec.serve.challenge import challenge, serving_ranks, validation_examples
from slmrec.serve.deploy import deploy, promote
from slmrec.serve.recommender import Recommender

from serve_helpers import card_hash


@pytest.fixture(scope="module")
def recs(pipeline):
    return {name: Recommender.load(pipeline / "models" / name) for name in ("student", "sasrec")}


@pytest.fixture(scope="module")
def examples(pipeline):
    return validation_examples(load_splits(pipeline / "splits"))


def test_serving_ranks_follow_the_served_top_k(recs, examples):
    rec = recs["student"]
    ranks = serving_ranks(rec, examples)
    assert len(ranks) == len(examples) and (ranks >= 1).all()
    for (history, target), rank in list(zip(examples, ranks))[:10]:  # rank r <= 10 <=> the served top-10 has it at r
        served = rec.recommend_history(history, 10).items
        assert (target in served and served.index(target) + 1 == rank) or (target not in served and rank > 10)
    unknown = serving_ranks(rec, [(examples[0][0], "never-seen-item")])
    assert unknown.tolist() == [rec.model.n_items + 1]  # an item the model cannot rank: last


def test_a_copy_is_non_inferior_and_a_broken_candidate_is_not(recs, examples):
    champion = recs["student"]
    same = challenge(champion, champion, examples, ["ndcg@10", "mrr"], margin=0.05, n_boot=200)
    assert same["promote"] and all(r["diff"] == 0 and r["lo"] == 0 for r in same["rows"])
    broken = copy.copy(champion)  # a planted bad retrain: scores that ignore the history (a random ranking)
    broken.model = copy.deepcopy(champion.model)
    generator = torch.Generator().manual_seed(0)
    broken.model.full_sort_predict = lambda batch: torch.rand(len(batch["target"]), champion.model.n_items + 1,
                                                              generator=generator)
    duel = challenge(broken, champion, examples, ["ndcg@10", "mrr"], margin=0.05, n_boot=200)
    assert not duel["promote"] and any(not r["non_inferior"] for r in duel["rows"])
    assert duel["users"] == len(examples) and duel["margin"] == 0.05 and "served precision" in duel["protocol"]


def test_champion_challenger_against_the_deployed_model(pipeline, tmp_path):
    (tmp_path / "params.yaml").write_text(
        f"promotion: {{record: models/promoted.json}}\nsequences: {{out_dir: {pipeline / 'splits'}}}\n"
        "serve: {models_dir: models}\neval: {bootstrap: 100}\n")
    project = DvcPipeline(project_dir=str(tmp_path))
    assert champion_challenger(project, pipeline / "models" / "student") is None  # nothing deployed yet
    dep = deploy(pipeline / "models" / "student", tmp_path / "models", root=tmp_path)
    promote(tmp_path / "models/promoted.json", dep, "student", who="test", why="first", root=tmp_path)
    assert champion_challenger(project, pipeline / "models" / "student") is None  # the same bytes: no duel
    duel = champion_challenger(project, pipeline / "models" / "teacher")
    assert duel["champion"] == card_hash(pipeline / "models/student")
    assert duel["candidate"] == card_hash(pipeline / "models/teacher")
    assert [r["metric"] for r in duel["rows"]] == ["ndcg@10", "mrr"]
    assert duel["promote"] == all(r["lo"] > -0.05 * r["champion"] for r in duel["rows"])


def _metrics(values: dict[str, float], speeds: dict[str, float], cis: dict[str, tuple]) -> dict:
    comparisons = {pair: {"ndcg@10": {"diff": d, "lo": lo, "hi": hi}} for pair, (d, lo, hi) in cis.items()}
    return {"models": {m: {"inference_users_per_s": s} for m, s in speeds.items()},
            "validation": {"models": {m: {"ndcg@10": v} for m, v in values.items()}, "comparisons": comparisons}}


def test_cheapest_not_worse_takes_sasrec_when_it_is_not_significantly_worse():
    values = {"sasrec": 0.110, "teacher": 0.118, "student_nokd": 0.113, "student": 0.116}
    speeds = {"sasrec": 3000.0, "teacher": 30.0, "student_nokd": 60.0, "student": 60.0}
    cis = {"teacher-sasrec": (0.008, -0.002, 0.018), "teacher-student_nokd": (0.005, 0.001, 0.009),
           "student-teacher": (-0.002, -0.006, 0.003)}
    cfg = PromotionConfig(metrics=["ndcg@10"], policy="cheapest_not_worse")
    name, why = choose_candidate(_metrics(values, speeds, cis), cfg)
    assert name == "sasrec" and "teacher" in why and "cheapest" in why  # sasrec − teacher CI [−0.018, +0.002]
    cis["teacher-sasrec"] = (0.008, 0.001, 0.018)  # now SASRec is significantly worse than the best
    name, _ = cheapest_not_worse(_metrics(values, speeds, cis), cfg)
    assert name == "student"  # student_nokd is significantly worse too; the student is not
    with pytest.raises(ValueError, match="choose one of"):
        choose_candidate({}, PromotionConfig(policy="nope"))
