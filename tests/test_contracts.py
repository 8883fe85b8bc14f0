"""Data contracts: each suite passes a good frame and names the failing expectation, with counts, on bad ones."""

from __future__ import annotations

import pandas as pd
import pytest

from data_contracts import ContractResult, ContractViolation, require, validate
from data_contracts.engine import ensure_context


def failing(result: ContractResult) -> dict[tuple[str, str, str], dict]:
    """(frame, expectation, column) -> failure, for exact assertions on what failed."""
    return {(f["frame"], f["expectation"], str(f["column"])): f for f in result.failures}


# --- raw_interactions ------------------------------------------------------------------------


def raw_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u2"],
            "item_id": ["a", "b", "a", "c"],
            "ts": [100, 100, 5, 4102444799],
            "rating": [5.0, 3.0, None, 1.0],
            "source_file": "f.csv",
            "row_number": [1, 2, 3, 4],
        }
    )


def test_raw_interactions_pass():
    result = validate(raw_frame(), "raw_interactions")
    assert result.success, result.summary()
    assert result.failures == []
    assert result.statistics["evaluated_expectations"] == 8  # 7 + the rating type check (rating present)
    assert result.statistics["unsuccessful_expectations"] == 0
    assert result.statistics["rows"] == {"raw_interactions": 4}


def test_raw_interactions_duplicate_event():
    df = pd.concat([raw_frame(), raw_frame().iloc[[2]]], ignore_index=True)  # row 4 repeats row 2
    result = validate(df, "raw_interactions")
    assert not result.success
    assert len(result.failures) == 1
    f = failing(result)[("raw_interactions", "expect_compound_columns_to_be_unique", "['user_id', 'item_id', 'ts']")]
    assert f["unexpected_count"] == 2  # both copies
    assert [e["row"] for e in f["examples"]] == [2, 4]
    assert f["examples"][0] | {"row": None} == {"row": None, "user_id": "u2", "item_id": "a", "ts": 5}


def test_raw_interactions_null_key():
    df = raw_frame()
    df.loc[1, "item_id"] = None
    result = validate(df, "raw_interactions")
    assert [(f["expectation"], f["column"]) for f in result.failures] == [
        ("expect_column_values_to_not_be_null", "item_id")
    ]
    assert result.failures[0]["unexpected_count"] == 1
    assert result.failures[0]["examples"] == [{"row": 1, "value": None}]


def test_raw_interactions_bad_timestamps_and_rating():
    df = raw_frame()
    df["ts"] = [100, -1, 1_600_000_000_000, 4102444800]  # negative, milliseconds, exactly 2100-01-01
    df["rating"] = ["5", "3", "4", "1"]
    result = validate(df, "raw_interactions")
    f = failing(result)
    assert f[("raw_interactions", "expect_column_values_to_be_between", "ts")]["unexpected_count"] == 3
    assert f[("raw_interactions", "expect_column_values_to_be_in_type_list", "rating")]["unexpected_count"] == 4
    assert len(f) == 2


def test_raw_interactions_missing_column_is_reported():
    result = validate(raw_frame().drop(columns=["ts"]), "raw_interactions")
    f = failing(result)
    missing = f[("raw_interactions", "expect_table_columns_to_match_set", "['user_id', 'item_id', 'ts']")]
    assert missing["exception"] is None and missing["details"]["mismatched"]["missing"] == ["ts"]
    # expectations on the absent column cannot run: reported as raised, not as passed
    assert f[("raw_interactions", "expect_column_values_to_not_be_null", "ts")]["exception"]


# --- items -----------------------------------------------------------------------------------


def test_items_pass_and_fail():
    good = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["A", None, "C"]})
    assert validate(good, "items").success
    bad = pd.DataFrame({"item_id": ["a", "b", "a", None], "title": ["A", "B", "A2", "X"]})
    f = failing(validate(bad, "items"))
    assert f[("items", "expect_column_values_to_be_unique", "item_id")]["unexpected_count"] == 2
    assert f[("items", "expect_column_values_to_not_be_null", "item_id")]["unexpected_count"] == 1
    assert len(f) == 2


# --- sequences -------------------------------------------------------------------------------


def maps() -> dict[str, pd.DataFrame]:
    return {
        "item_map": pd.DataFrame(
            {"item_idx": [1, 2, 3, 4], "item_id": ["a", "c", "d", "b"], "title": ["A", None, "D", "B"]}
        ),
        "user_map": pd.DataFrame({"user_idx": [0, 1], "user_id": ["2", "10"]}),
    }


def sequence_frames() -> dict[str, pd.DataFrame]:
    # user 1 has two events at ts=100: row 1 before row 2 (the tie-break)
    seq = pd.DataFrame(
        {
            "user_idx": [0, 0, 0, 1, 1, 1, 1],
            "position": [0, 1, 2, 0, 1, 2, 3],
            "item_idx": [1, 2, 3, 2, 4, 1, 3],
            "ts": [10, 20, 30, 50, 100, 100, 200],
            "source_file": "f.csv",
            "row_number": [4, 5, 6, 3, 1, 2, 7],
            "item_pos": 0,
        }
    )
    return {"sequences": seq, **maps()}


def test_sequences_pass():
    result = validate(sequence_frames(), "sequences")
    assert result.success, result.summary()
    assert result.statistics["rows"] == {
        "sequences.events": 7,
        "sequences.per_user": 2,
        "sequences.item_map": 4,
        "sequences.user_map": 2,
    }


def test_sequences_unsorted():
    frames = sequence_frames()
    frames["sequences"].loc[5, "row_number"] = 0  # equal ts, but the later position has the earlier row
    result = validate(frames, "sequences")
    assert [(f["frame"], f["expectation"], f["column"]) for f in result.failures] == [
        ("sequences.per_user", "expect_column_values_to_be_in_set", "is_sorted")
    ]
    assert result.failures[0]["unexpected_count"] == 1
    assert result.failures[0]["examples"] == [{"is_sorted": False, "user_idx": 1}]


def test_sequences_padding_id_and_short_user():
    frames = sequence_frames()
    seq = frames["sequences"]
    seq.loc[0, "item_idx"] = 0  # padding used as an item
    frames["sequences"] = seq.drop(index=2)  # user 0 keeps 2 items
    f = failing(validate(frames, "sequences"))
    assert f[("sequences.events", "expect_column_values_to_not_be_in_set", "item_idx")]["unexpected_count"] == 1
    assert f[("sequences.events", "expect_column_values_to_be_between", "item_idx")]["unexpected_count"] == 1
    short = f[("sequences.per_user", "expect_column_values_to_be_between", "length")]
    assert short["unexpected_count"] == 1 and short["examples"] == [{"length": 2, "user_idx": 0}]
    assert len(f) == 3


def test_sequences_position_gap():
    frames = sequence_frames()
    frames["sequences"].loc[6, "position"] = 5
    f = failing(validate(frames, "sequences"))
    assert list(f) == [("sequences.per_user", "expect_column_values_to_be_in_set", "positions_ok")]


# --- splits ----------------------------------------------------------------------------------


def split_frames() -> dict[str, pd.DataFrame]:
    return {
        "train": pd.DataFrame({"user_idx": [0, 1], "items": [[1], [2, 4]]}),
        "valid": pd.DataFrame({"user_idx": [0, 1], "history": [[1], [2, 4]], "target": [2, 1]}),
        "test": pd.DataFrame({"user_idx": [0, 1], "history": [[1, 2], [2, 4, 1]], "target": [3, 3]}),
        **maps(),
    }


def test_splits_pass():
    result = validate(split_frames(), "splits")
    assert result.success, result.summary()
    assert result.statistics["rows"]["splits.ids"] == 3 + 2 + 2  # train items + valid + test targets


def test_splits_two_test_targets():
    frames = split_frames()
    frames["test"] = pd.concat([frames["test"], frames["test"].iloc[[1]]], ignore_index=True)
    result = validate(frames, "splits")
    assert [(f["frame"], f["column"]) for f in result.failures] == [("splits.per_user", "n_test_targets")]
    f = result.failures[0]
    assert f["expectation"] == "expect_column_values_to_be_in_set"
    assert f["unexpected_count"] == 1 and f["examples"] == [{"n_test_targets": 2, "user_idx": 1}]
    assert "exactly one test target per user" in result.summary()


def test_splits_missing_valid_target_and_bad_history():
    frames = split_frames()
    frames["valid"] = frames["valid"].iloc[[1]].reset_index(drop=True)  # user 0 has no validation target
    frames["test"].at[1, "history"] = [2, 4, 3]  # last history item is not user 1's valid target
    f = failing(validate(frames, "splits"))
    assert f[("splits.per_user", "expect_column_values_to_be_in_set", "n_valid_targets")]["examples"] == [
        {"n_valid_targets": 0, "user_idx": 0}
    ]
    assert f[("splits.per_user", "expect_column_values_to_be_in_set", "test_history_ok")]["unexpected_count"] == 1
    short = f[("splits.per_user", "expect_column_values_to_be_between", "length")]  # 1 train + 1 test target
    assert short["examples"] == [{"length": 2, "user_idx": 0}]
    assert len(f) == 3  # user 0's history checks are not applicable (NA), not failures


def test_splits_padding_id_as_target():
    frames = split_frames()
    frames["test"].at[0, "target"] = 0
    f = failing(validate(frames, "splits"))
    assert f[("splits.ids", "expect_column_values_to_not_be_in_set", "item_idx")]["examples"] == [{"row": 5, "value": 0}]
    assert f[("splits.ids", "expect_column_values_to_be_between", "item_idx")]["unexpected_count"] == 1
    assert len(f) == 2


def test_splits_non_bijective_maps():
    frames = split_frames()
    frames["item_map"].loc[3, "item_id"] = "a"  # two indices for item 'a'
    frames["user_map"].loc[1, "user_idx"] = 0  # two users on index 0, none on 1
    f = failing(validate(frames, "splits"))
    assert f[("splits.item_map", "expect_column_values_to_be_unique", "item_id")]["unexpected_count"] == 2
    assert f[("splits.user_map", "expect_column_values_to_be_unique", "user_idx")]["unexpected_count"] == 2
    assert len(f) == 2


def test_require_raises_with_readable_summary():
    frames = split_frames()
    frames["item_map"].loc[3, "item_id"] = "a"
    result = validate(frames, "splits")
    with pytest.raises(ContractViolation) as err:
        require(result)
    message = str(err.value)
    assert message.startswith("contract 'splits': FAILED (1 of ")
    expected = "splits.item_map: expect_column_values_to_be_unique(column=item_id) [item map bijective]: 2 unexpected of 4"
    assert expected in message
    assert err.value.result is result
    good = validate(split_frames(), "splits")
    assert require(good) is good
    assert good.to_dict()["success"] is True and good.to_dict()["failures"] == []


def test_bad_calls():
    with pytest.raises(ValueError, match="unknown contract suite 'nope'"):
        validate(raw_frame(), "nope")
    with pytest.raises(TypeError, match="takes a dict of frames"):
        validate(raw_frame(), "splits")
    with pytest.raises(ValueError, match=r"missing frame\(s\) \['valid'\]"):
        validate({k: v for k, v in split_frames().items() if k != "valid"}, "splits")


def test_one_context_per_process():
    assert ensure_context() is ensure_context()
