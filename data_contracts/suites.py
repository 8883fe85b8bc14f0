"""The contracts, as Great Expectations suites built in code.

A suite builder takes the caller's frame(s) and returns `FrameCheck`s: a frame plus the
`ExpectationSuite` to run on it. Rules that are not single GX built-ins (one test target per
user, sequences sorted by time, histories consistent across splits) are computed here as derived
per-user columns and then checked by ordinary GX expectations, so GX evaluates and reports every rule.

Frames (pandas DataFrames or pyarrow Tables):
- raw_interactions: the canonical `raw_interactions` table (docs/ARCHITECTURE.md).
- items: the `items` table.
- sequences: {"sequences": user_idx, position, item_idx, ts, source_file, row_number, item_pos
  (one row per interaction of the final sequences), "item_map", "user_map"}.
- splits: {"train", "valid", "test", "item_map", "user_map"} as in the split files.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from data_contracts.engine import FrameCheck

TS_MAX = 4102444800  # 2100-01-01T00:00:00Z: later timestamps are unit errors (ms, µs), not events
INTEGER_TYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
INTEGER_TYPES += ["Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64"]  # pandas nullable
NUMERIC_TYPES = INTEGER_TYPES + ["float16", "float32", "float64", "Float32", "Float64"]
MIN_SEQUENCE_LENGTH = 3  # leave-one-out needs >= 1 train item, a valid and a test target
MIN_LENGTH_RULE = f"every user has >= {MIN_SEQUENCE_LENGTH} items"

SUITES: dict[str, Callable[[object], list[FrameCheck]]] = {}


def register(name: str):
    def wrap(fn):
        SUITES[name] = fn
        return fn

    return wrap


def _rule(text: str) -> dict:
    """Expectation meta: the contract rule in words (shown in failures and summaries)."""
    return {"rule": text}


def _suite(name: str, expectations: list) -> object:
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=name)
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


def _pandas(frame, what: str) -> pd.DataFrame:
    if isinstance(frame, pd.DataFrame):
        return frame
    if isinstance(frame, pa.Table):
        return frame.to_pandas()
    raise TypeError(f"{what}: expected a pandas DataFrame or pyarrow Table, got {type(frame).__name__}")


def _arrow(frame, what: str, columns: list[str]) -> pa.Table:
    if isinstance(frame, pd.DataFrame):
        frame = pa.Table.from_pandas(frame, preserve_index=False)
    if not isinstance(frame, pa.Table):
        raise TypeError(f"{what}: expected a pandas DataFrame or pyarrow Table, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.column_names]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; has {frame.column_names}")
    return frame.combine_chunks()


def _frames(data, suite: str, names: list[str]) -> dict:
    if not isinstance(data, dict):
        raise TypeError(f"contract '{suite}' takes a dict of frames {names}, got {type(data).__name__}")
    missing = [n for n in names if n not in data]
    if missing:
        raise ValueError(f"contract '{suite}': missing frame(s) {missing}; got {sorted(data)}")
    return data


def _gx_ints(df: pd.DataFrame) -> pd.DataFrame:
    """Integer columns as int64: GX's pandas `between` is vectorised only for int64/float64, else a Python loop."""
    narrow = {c: "int64" for c, t in df.dtypes.items() if pd.api.types.is_integer_dtype(t) and t != np.int64}
    return df.astype(narrow) if narrow else df


def _ints(column: pa.ChunkedArray | pa.Array, fill: int = -1) -> np.ndarray:
    """Integer column as int64 numpy; nulls become `fill` (the null expectations report them)."""
    return pc.fill_null(column, fill).to_numpy().astype(np.int64, copy=False)


# --- raw tables -------------------------------------------------------------------------------


@register("raw_interactions")
def raw_interactions(df) -> list[FrameCheck]:
    import great_expectations.expectations as gxe

    df = _pandas(df, "raw_interactions")
    keys = ["user_id", "item_id", "ts"]
    expectations = [
        gxe.ExpectTableColumnsToMatchSet(column_set=keys, exact_match=False, meta=_rule("key columns present")),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c, meta=_rule("non-null keys")) for c in keys],
        gxe.ExpectColumnValuesToBeInTypeList(column="ts", type_list=INTEGER_TYPES, meta=_rule("ts: integer unix seconds")),
        gxe.ExpectColumnValuesToBeBetween(
            column="ts", min_value=0, max_value=TS_MAX, strict_max=True, meta=_rule("sane timestamps: 0 <= ts < 2100-01-01")
        ),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=keys, meta=_rule("no duplicate events (user, item, ts)")),
    ]
    if "rating" in df.columns:
        rating = gxe.ExpectColumnValuesToBeInTypeList(column="rating", type_list=NUMERIC_TYPES, meta=_rule("numeric rating"))
        expectations.append(rating)
    return [FrameCheck("raw_interactions", df, _suite("raw_interactions", expectations))]


@register("items")
def items(df) -> list[FrameCheck]:
    import great_expectations.expectations as gxe

    df = _pandas(df, "items")
    expectations = [
        gxe.ExpectTableColumnsToMatchSet(column_set=["item_id"], exact_match=False, meta=_rule("item_id present")),
        gxe.ExpectColumnValuesToNotBeNull(column="item_id", meta=_rule("non-null item_id")),
        gxe.ExpectColumnValuesToBeUnique(column="item_id", meta=_rule("one catalog row per item")),
    ]
    return [FrameCheck("items", df, _suite("items", expectations))]


# --- id maps (shared by sequences and splits) --------------------------------------------------


def _map_checks(suite: str, item_map, user_map) -> list[FrameCheck]:
    """Bijective maps: unique non-null ids on both sides, indices exactly 1..n_items / 0..n_users-1."""
    import great_expectations.expectations as gxe

    item_map = _gx_ints(_pandas(item_map, f"{suite}: item_map")[["item_idx", "item_id"]])
    user_map = _gx_ints(_pandas(user_map, f"{suite}: user_map")[["user_idx", "user_id"]])
    n_items, n_users = len(item_map), len(user_map)
    item_expectations = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta=_rule("at least one item")),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c, meta=_rule("item map bijective")) for c in ("item_idx", "item_id")],
        *[gxe.ExpectColumnValuesToBeUnique(column=c, meta=_rule("item map bijective")) for c in ("item_idx", "item_id")],
        gxe.ExpectColumnValuesToBeBetween(
            column="item_idx", min_value=1, max_value=n_items, meta=_rule("item ids are 1..n_items")
        ),
        gxe.ExpectColumnValuesToNotBeInSet(column="item_idx", value_set=[0], meta=_rule("padding id 0 is never an item")),
    ]
    user_expectations = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta=_rule("at least one user")),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c, meta=_rule("user map bijective")) for c in ("user_idx", "user_id")],
        *[gxe.ExpectColumnValuesToBeUnique(column=c, meta=_rule("user map bijective")) for c in ("user_idx", "user_id")],
        gxe.ExpectColumnValuesToBeBetween(
            column="user_idx", min_value=0, max_value=n_users - 1, meta=_rule("user ids are 0..n_users-1")
        ),
    ]
    return [
        FrameCheck(f"{suite}.item_map", item_map, _suite(f"{suite}.item_map", item_expectations)),
        FrameCheck(f"{suite}.user_map", user_map, _suite(f"{suite}.user_map", user_expectations)),
    ]


def _id_expectations(n_items: int, n_users: int) -> list:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToNotBeNull(column="item_idx", meta=_rule("every event has an item")),
        gxe.ExpectColumnValuesToBeBetween(
            column="item_idx", min_value=1, max_value=n_items, meta=_rule("item ids in 1..n_items")
        ),
        gxe.ExpectColumnValuesToNotBeInSet(column="item_idx", value_set=[0], meta=_rule("padding id 0 is never an item")),
        gxe.ExpectColumnValuesToNotBeNull(column="user_idx", meta=_rule("every event has a user")),
        gxe.ExpectColumnValuesToBeBetween(
            column="user_idx", min_value=0, max_value=n_users - 1, meta=_rule("user ids in the user map")
        ),
    ]


# --- sequences -------------------------------------------------------------------------------

SEQUENCE_COLUMNS = ["user_idx", "position", "item_idx", "ts", "source_file", "row_number", "item_pos"]


def _string_rank(column: pa.ChunkedArray) -> np.ndarray:
    """Rank of each value in byte order (locale-free), so strings can join a numeric sort key."""
    encoded = pc.fill_null(column, "").combine_chunks().dictionary_encode()
    order = pc.sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank[encoded.indices.to_numpy()]


def sequence_order_ok(table: pa.Table, n_users: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user (0..n_users-1): (length, is_sorted, positions_ok).

    Rows are read in (user_idx, position) order. `is_sorted`: the tie-break key
    (ts, source_file, row_number, item_pos) strictly increases along positions.
    `positions_ok`: positions are exactly 0..length-1.
    """
    user = _ints(table["user_idx"])
    keys = [_ints(table["ts"]), _string_rank(table["source_file"]), _ints(table["row_number"]), _ints(table["item_pos"])]
    position = _ints(table["position"])
    order = np.lexsort((position, user))
    user, position, keys = user[order], position[order], [k[order] for k in keys]
    in_range = (user >= 0) & (user < n_users)
    length = np.bincount(user[in_range], minlength=n_users)
    starts = np.concatenate([[0], np.cumsum(length)])[:-1]
    bad = np.zeros(n_users, bool)
    u, p = user[in_range], position[in_range]
    bad[u[p != np.arange(len(u)) - starts[u]]] = True
    positions_ok = ~bad
    # adjacent pairs inside one user: key(next) > key(prev) lexicographically
    same = user[1:] == user[:-1]
    greater = np.zeros(len(user) - 1, bool)
    equal = np.ones(len(user) - 1, bool)
    for k in keys:
        greater |= equal & (k[1:] > k[:-1])
        equal &= k[1:] == k[:-1]
    unsorted_users = user[1:][same & ~greater]
    is_sorted = np.ones(n_users, bool)
    is_sorted[unsorted_users[(unsorted_users >= 0) & (unsorted_users < n_users)]] = False
    return length, is_sorted, positions_ok


@register("sequences")
def sequences(data) -> list[FrameCheck]:
    import great_expectations.expectations as gxe

    frames = _frames(data, "sequences", ["sequences", "item_map", "user_map"])
    table = _arrow(frames["sequences"], "sequences: sequences", SEQUENCE_COLUMNS)
    n_items, n_users = len(frames["item_map"]), len(frames["user_map"])
    length, is_sorted, positions_ok = sequence_order_ok(table, n_users)
    events = _gx_ints(table.select(["user_idx", "item_idx", "ts"]).to_pandas())
    per_user = pd.DataFrame(
        {"length": length, "is_sorted": is_sorted, "positions_ok": positions_ok},
        index=pd.RangeIndex(n_users, name="user_idx"),
    )
    event_expectations = _id_expectations(n_items, n_users) + [
        gxe.ExpectColumnValuesToNotBeNull(column="ts", meta=_rule("every event has a time"))
    ]
    user_expectations = [
        gxe.ExpectColumnValuesToBeBetween(column="length", min_value=MIN_SEQUENCE_LENGTH, meta=_rule(MIN_LENGTH_RULE)),
        gxe.ExpectColumnValuesToBeInSet(
            column="is_sorted", value_set=[True], meta=_rule("ordered by (ts, source_file, row_number, item_pos)")
        ),
        gxe.ExpectColumnValuesToBeInSet(column="positions_ok", value_set=[True], meta=_rule("positions are 0..length-1")),
    ]
    return [
        FrameCheck("sequences.events", events, _suite("sequences.events", event_expectations)),
        FrameCheck("sequences.per_user", per_user, _suite("sequences.per_user", user_expectations)),
        *_map_checks("sequences", frames["item_map"], frames["user_map"]),
    ]


# --- splits ----------------------------------------------------------------------------------


def _first_rows(user: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(row count per user, first row index per user or -1) for in-range users."""
    rows = np.flatnonzero((user >= 0) & (user < n_users))
    count = np.bincount(user[rows], minlength=n_users)
    first = np.full(n_users, -1, np.int64)
    users, at = np.unique(user[rows], return_index=True)
    first[users] = rows[at]
    return count, first


def _concat_int64(*columns) -> pa.Array:
    chunks = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in columns]
    return pa.concat_arrays([c.cast(pa.int64()) for c in chunks])


def _lengths(lists: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.fill_null(pc.list_value_length(lists), 0).to_numpy().astype(np.int64)


def _take(column: pa.ChunkedArray | pa.Array, rows: np.ndarray) -> pa.Array:
    taken = pc.take(column, pa.array(rows, pa.int64()))
    return taken.combine_chunks() if isinstance(taken, pa.ChunkedArray) else taken


def _prefix_equal(a_lists, a_rows: np.ndarray, b_lists, b_rows: np.ndarray) -> np.ndarray:
    """For row pairs (a_rows[i], b_rows[i]): does list b start with all of list a? (needs len(b) >= len(a))"""
    a = _take(a_lists, a_rows)
    b = _take(b_lists, b_rows)
    a_len, b_len = _lengths(a), _lengths(b)
    flat_a = _ints(pc.list_flatten(a))
    flat_b = _ints(pc.list_flatten(b))
    # keep the first len(a) elements of every b list
    b_parent = pc.list_parent_indices(b).to_numpy()
    b_starts = np.concatenate([[0], np.cumsum(b_len)])[:-1]
    within = np.arange(len(flat_b)) - b_starts[b_parent]
    prefix_b = flat_b[within < a_len[b_parent]]
    ok = np.ones(len(a_rows), bool)
    a_parent = pc.list_parent_indices(a).to_numpy()
    ok[np.unique(a_parent[flat_a != prefix_b])] = False
    return ok


def history_consistency(train: pa.Table, valid: pa.Table, test: pa.Table, n_users: int) -> dict[str, object]:
    """Per-user counts and history checks (NA where a user lacks one of the rows to compare)."""
    counts, firsts = {}, {}
    for name, table in [("train", train), ("valid", valid), ("test", test)]:
        counts[name], firsts[name] = _first_rows(_ints(table["user_idx"]), n_users)
    t, v, s = firsts["train"], firsts["valid"], firsts["test"]
    train_len = np.zeros(n_users, np.int64)
    train_len[t >= 0] = _lengths(_take(train["items"], t[t >= 0]))
    length = train_len + (v >= 0) + (s >= 0)

    valid_ok = np.zeros(n_users, bool)
    comparable_v = (t >= 0) & (v >= 0)
    users = np.flatnonzero(comparable_v)
    u = users[_lengths(_take(valid["history"], v[users])) == train_len[users]]
    valid_ok[u] = _prefix_equal(train["items"], t[u], valid["history"], v[u])

    test_ok = np.zeros(n_users, bool)
    comparable_s = comparable_v & (s >= 0)
    users = np.flatnonzero(comparable_s)
    u = users[_lengths(_take(test["history"], s[users])) == train_len[users] + 1]
    prefix = _prefix_equal(train["items"], t[u], test["history"], s[u])
    lists = _take(test["history"], s[u])
    last = _ints(pc.list_flatten(lists))[np.cumsum(_lengths(lists)) - 1]  # (len(u),) last history item
    test_ok[u] = prefix & (last == _ints(_take(valid["target"], v[u])))

    return {
        "n_train_rows": counts["train"],
        "n_valid_targets": counts["valid"],
        "n_test_targets": counts["test"],
        "length": length,
        "valid_history_ok": _nullable(valid_ok, comparable_v),
        "test_history_ok": _nullable(test_ok, comparable_s),
    }


def _nullable(values: np.ndarray, known: np.ndarray) -> pd.arrays.BooleanArray:
    """Booleans with NA where the check could not be made (GX counts NA as missing, not unexpected)."""
    return pd.arrays.BooleanArray(values.astype(bool), ~known)


@register("splits")
def splits(data) -> list[FrameCheck]:
    import great_expectations.expectations as gxe

    frames = _frames(data, "splits", ["train", "valid", "test", "item_map", "user_map"])
    train = _arrow(frames["train"], "splits: train", ["user_idx", "items"])
    valid = _arrow(frames["valid"], "splits: valid", ["user_idx", "history", "target"])
    test = _arrow(frames["test"], "splits: test", ["user_idx", "history", "target"])
    n_items, n_users = len(frames["item_map"]), len(frames["user_map"])

    # every item id the splits use: train items and both targets (histories are checked against train)
    train_users = pc.take(train["user_idx"], pc.list_parent_indices(train["items"]))
    ids = pa.table(
        {
            "user_idx": _concat_int64(train_users, valid["user_idx"], test["user_idx"]),
            "item_idx": _concat_int64(pc.list_flatten(train["items"]), valid["target"], test["target"]),
        }
    ).to_pandas()
    per_user = pd.DataFrame(
        history_consistency(train, valid, test, n_users), index=pd.RangeIndex(n_users, name="user_idx")
    )
    exactly_one = {
        "n_train_rows": "exactly one train row per user",
        "n_valid_targets": "exactly one validation target per user",
        "n_test_targets": "exactly one test target per user",
    }
    consistent = {
        "valid_history_ok": "valid history == train items",
        "test_history_ok": "test history == train items + valid target",
    }
    user_expectations = [
        *[gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[1], meta=_rule(rule)) for c, rule in exactly_one.items()],
        gxe.ExpectColumnValuesToBeBetween(column="length", min_value=MIN_SEQUENCE_LENGTH, meta=_rule(MIN_LENGTH_RULE)),
        *[gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[True], meta=_rule(rule)) for c, rule in consistent.items()],
    ]
    return [
        FrameCheck("splits.ids", ids, _suite("splits.ids", _id_expectations(n_items, n_users))),
        FrameCheck("splits.per_user", per_user, _suite("splits.per_user", user_expectations)),
        *_map_checks("splits", frames["item_map"], frames["user_map"]),
    ]
