"""Batch recommendations: `slmrec recommend` and the daily-partitioned Dagster asset `recommendations`."""

import json
import shutil

import dagster as dg
import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from orchestration.defs.deployment.recommendations import recommendations
from orchestration.pipeline import DvcPipeline
from slmrec import cli
from slmrec.data.ingest import ingest
from slmrec.serve.batch import COLUMNS, history_problems, problems, run_batch
from slmrec.days import day_bounds
from slmrec.serve.recommender import Recommender

from serve_helpers import N_USERS, card_hash, promote


def active_on(day_index: int) -> set[str]:
    """Users with an event on day `day_index` of January 1998 (serve_helpers.user_events)."""
    return {f"u{u}" for u in range(N_USERS) if 0 <= day_index - u % 3 < 12}


def test_recommend_cli_day_partition_and_duckdb(pipeline, tmp_path, capsys):
    model, db = pipeline / "models" / "student", tmp_path / "recs.duckdb"
    base = ["recommend", "--model", str(model), "--k", "5", "--duckdb", str(db), "--json",
            "--params", str(tmp_path / "none.yaml")]
    out = tmp_path / "1998-01-01.parquet"
    assert cli.main(base + ["--out", str(out), "--day", "1998-01-01"]) == 0
    summary = json.loads(capsys.readouterr().out)
    table = pq.read_table(out)
    assert table.column_names == COLUMNS
    assert [str(t) for t in table.schema.types] == ["string", "int32", "string", "double", "string", "string"]
    df = table.to_pandas()
    assert set(df.user_id) == active_on(0) and summary["users_scored"] == len(active_on(0))
    assert set(df.partition) == {"1998-01-01"} and set(df.model) == {card_hash(model)}
    assert len(df) == 5 * len(active_on(0)) and problems(df, 5) == []
    assert set(df.item_id) <= {f"m{i}" for i in range(1, 31)}  # original ids, not indices

    # the same day again replaces its rows; another day adds its own
    assert cli.main(base + ["--out", str(out), "--day", "1998-01-01"]) == 0
    assert cli.main(base + ["--out", str(tmp_path / "all.parquet"), "--partition", "all"]) == 0
    capsys.readouterr()
    with duckdb.connect(str(db), read_only=True) as con:
        counts = dict(con.sql("SELECT partition, count(*) FROM recommendations GROUP BY 1").fetchall())
    assert counts == {"1998-01-01": 5 * len(active_on(0)), "all": 5 * N_USERS}


def test_recommend_cli_bad_input(pipeline, tmp_path, capsys):
    users = tmp_path / "users.txt"
    users.write_text("u1\nghost\n")
    base = ["recommend", "--model", str(pipeline / "models" / "student"), "--out", str(tmp_path / "x.parquet"),
            "--params", str(tmp_path / "none.yaml")]
    assert cli.main(base + ["--users", str(users)]) == 2
    assert "ghost" in capsys.readouterr().err and not (tmp_path / "x.parquet").exists()
    assert cli.main(base + ["--k", "0"]) == 2
    assert "--k must be in 1..100" in capsys.readouterr().err
    assert cli.main(base + ["--day", "1998-13-01"]) == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err
    assert cli.main(["recommend", "--out", str(tmp_path / "x.parquet"), "--params", str(tmp_path / "none.yaml"),
                     "--root", str(tmp_path)]) == 2
    assert "promote a model first" in capsys.readouterr().err


def test_serve_cli_bad_input_exits_2(pipeline, tmp_path, capsys):
    none = ["--params", str(tmp_path / "none.yaml")]
    assert cli.main(["serve", "--model", str(tmp_path / "missing"), *none]) == 2
    assert "has no card.json" in capsys.readouterr().err
    assert cli.main(["serve", "--model", str(pipeline / "models" / "student"), "--max-batch", "0", *none]) == 2
    assert "max_batch >= 1" in capsys.readouterr().err
    assert cli.main(["serve", "--root", str(tmp_path), *none]) == 2  # no --model and nothing promoted
    assert "promote a model first" in capsys.readouterr().err


@pytest.fixture
def project(pipeline, tmp_path):
    """A project dir for the asset: params.yaml and models/promoted.json naming the tiny student."""
    (tmp_path / "models").mkdir()
    promote(tmp_path / "models" / "promoted.json", pipeline / "models" / "student")
    (tmp_path / "params.yaml").write_text(
        "promotion: {record: models/promoted.json}\n"
        f"serve: {{k: 4, recommendations_dir: results/recommendations, models_dir: {pipeline / 'models'}}}\n"
    )
    return tmp_path


def materialize(project, day: str, instance, all_users: bool = False) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [recommendations], partition_key=day, instance=instance,
        resources={"pipeline": DvcPipeline(project_dir=str(project))},
        run_config={"ops": {"recommendations": {"config": {"all_users": all_users}}}},
    )


def test_recommendations_asset(pipeline, project):
    out = project / "results" / "recommendations"
    with dg.instance_for_test() as instance:
        result = materialize(project, "1998-01-14", instance)
        assert result.success
        meta = result.asset_materializations_for_node("recommendations")[0].metadata
        assert meta["users_scored"].value == len(active_on(13)) and meta["k"].value == 4
        assert meta["model"].value == card_hash(pipeline / "models" / "student")
        (check,) = result.get_asset_check_evaluations()
        assert check.passed and check.check_name == "recommendations_well_formed"
        df = pq.read_table(out / "1998-01-14.parquet").to_pandas()
        assert set(df.user_id) == active_on(13) and set(df.partition) == {"1998-01-14"}

        assert materialize(project, "1998-01-14", instance).success  # re-materialized: replaced, not appended
        assert materialize(project, "1998-01-02", instance, all_users=True).success
    with duckdb.connect(str(out / "recommendations.duckdb"), read_only=True) as con:
        counts = dict(con.sql("SELECT partition, count(*) FROM recommendations GROUP BY 1").fetchall())
    # 1998-01-02, all users, point in time: only those with an event by the end of that day (u % 3 < 2) have a history
    assert counts == {"1998-01-14": 4 * len(active_on(13)), "1998-01-02": 4 * sum(u % 3 < 2 for u in range(N_USERS))}


def test_recommendations_asset_refuses_a_record_that_does_not_match(pipeline, project):
    record = project / "models" / "promoted.json"
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "content_hash": "0" * 64}))
    with dg.instance_for_test() as instance:
        result = dg.materialize([recommendations], partition_key="1998-01-14", instance=instance, raise_on_error=False,
                                resources={"pipeline": DvcPipeline(project_dir=str(project))})
    assert not result.success
    assert not (project / "results" / "recommendations" / "1998-01-14.parquet").exists()


def test_point_in_time_lists_do_not_see_later_days(pipeline, tmp_path):
    """A backfill of day D after later days were ingested gives the lists of the end of D, not of today."""
    db = tmp_path / "warehouse.duckdb"
    shutil.copy(pipeline / "warehouse.duckdb", db)
    rec = Recommender.load(pipeline / "models" / "student", db=db)
    users, end_of_day = sorted(active_on(5)), day_bounds("1998-01-06")[1]
    before = rec.recommend_users(users, 5, as_of=end_of_day)
    late = day_bounds("1998-02-10")[0]
    rows = [f"{u},{item},{late + n}" for n, (u, item) in enumerate((u, f"m{n % 30 + 1}") for n, u in enumerate(users))]
    (tmp_path / "late.csv").write_text("user_id,item_id,ts\n" + "\n".join(rows) + "\n")
    ingest("events", str(tmp_path / "late.csv"), str(db))
    assert rec.history.refresh_if_changed()
    after = rec.recommend_users(users, 5, as_of=end_of_day)
    pd.testing.assert_frame_equal(before, after)  # the later day changed nothing of day 5's lists
    assert not rec.recommend_users(users, 5).equals(before)  # while today's lists do see it


def test_a_list_with_a_history_item_is_not_published(pipeline, tmp_path, monkeypatch):
    rec = Recommender.load(pipeline / "models" / "student")
    history = rec.history.get("u3")
    planted = pd.DataFrame({"user_id": ["u3", "u3"], "rank": [1, 2], "item_id": [history[0], "m99"],
                            "score": [2.0, 1.0], "model": [rec.model_hash] * 2, "partition": ["x", "x"]})
    assert "user u3: recommends item(s) of their history" in history_problems(planted, rec)[0]
    monkeypatch.setattr("slmrec.serve.batch.batch_recommendations", lambda *a, **k: planted)
    with pytest.raises(ValueError, match="not published"):
        run_batch(rec, 2, tmp_path / "x.parquet", "x", users_file=_users(tmp_path, ["u3"]))
    assert not (tmp_path / "x.parquet").exists()


def _users(tmp_path, users):
    path = tmp_path / "users.txt"
    path.write_text("\n".join(users) + "\n")
    return path
