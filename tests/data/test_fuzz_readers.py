"""Property-based tests of every reader (issue 10, item 5): whatever the bytes, ingest either refuses
the file with a one-line error that names it, or accounts for every row — accepted or quarantined
with a reason, `accepted + quarantined == rows_read` — and the store holds exactly that."""

from __future__ import annotations

import gzip
import io
import json
import os
import tempfile
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slmrec import cli
from slmrec.data.ingest import REASONS, ingest

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- building blocks: the nasty values real logs contain ---------------------------------------

ID = st.one_of(
    st.from_regex(r"[A-Za-z0-9_]{1,12}", fullmatch=True),
    st.sampled_from(["", " ", "a,b", 'q"uote', "tab\there", "semi;colon", "x y", "'single'", "null", "NaN",
                     "ü-ñ", "\ufeffbom", "0", "-1", "1e3", "{}", "[1]"]),
)
TS = st.one_of(
    st.integers(-10**13, 10**19).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "nan", "inf", "-inf", "NaN", "2015-06-02T05:02:12Z", "2015-06-02", "yesterday",
                     "1433221332117", "1e300", "-5", "０１２"]),
)
RATING = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.sampled_from(["", "5", "4.5", "x", "inf"]))
NEWLINE = st.sampled_from(["\n", "\r\n"])
JUNK_LINE = st.one_of(st.text(max_size=40), st.just(""), st.just("x" * 200_000), st.just("\ufeff"))


def assemble(lines: list[str], newline: str, bom: bool, bad_byte: int | None) -> bytes:
    data = ("\ufeff" if bom else "") + newline.join(lines) + newline
    raw = data.encode("utf-8", "surrogatepass")
    if bad_byte is not None and raw:
        pos = bad_byte % len(raw)
        raw = raw[:pos] + b"\xff" + raw[pos:]  # invalid UTF-8 somewhere
    return raw


def lines_of(row: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(st.one_of(row, row, row, JUNK_LINE), min_size=1, max_size=12)  # mostly rows, some junk


# an invalid UTF-8 byte refuses the whole file (a wrong encoding is refused, not quarantined row by row):
# drawn rarely, so that most examples exercise the rows
def sometimes(strategy, one_in: int):
    """`strategy` about once in `one_in` draws, else None."""
    return st.sampled_from([False] * (one_in - 1) + [True]).flatmap(lambda on: strategy if on else st.none())


TEXT_OPTS = dict(newline=NEWLINE, bom=st.booleans(), bad_byte=sometimes(st.integers(0, 10**6), 10))


# --- one file per format -------------------------------------------------------------------------

@st.composite
def recbole_file(draw):
    header = draw(st.sampled_from(["user_id:token\titem_id:token\trating:float\ttimestamp:float"] * 4
                                  + ["user_id:token\titem_id:token", "user_id:token\titem_id:token\ttimestamp:float",
                                     "user item rating", ""]))
    row = st.tuples(ID, ID, RATING, TS).map(lambda t: "\t".join("" if v is None else v for v in t))
    return assemble([header, *draw(lines_of(row))], **{k: draw(v) for k, v in TEXT_OPTS.items()}), ".inter"


@st.composite
def seqtxt_file(draw):
    row = st.lists(ID, min_size=2, max_size=6).map(" ".join)
    return assemble(draw(lines_of(row)), **{k: draw(v) for k, v in TEXT_OPTS.items()}), ".txt"


@st.composite
def amazon_file(draw):
    def review(t):
        u, i, r, ts, py = t
        doc = {"reviewerID": u, "asin": i, "overall": r, "unixReviewTime": ts}
        return repr(doc) if py else json.dumps(doc)

    row = st.tuples(ID, ID, RATING, TS, st.booleans()).map(review)
    raw = assemble(draw(lines_of(row)), **{k: draw(v) for k, v in TEXT_OPTS.items()})
    gz = draw(st.sampled_from(["plain"] * 2 + ["gz", "cut"]))
    if gz != "plain":  # gzipped, maybe truncated mid-stream (a cut download)
        raw = gzip.compress(raw)
        raw = raw[: draw(st.integers(0, len(raw)))] if gz == "cut" else raw
    return raw, ".json.gz" if raw[:2] == b"\x1f\x8b" else ".json"


@st.composite
def usermap_file(draw):
    value = st.one_of(st.lists(st.one_of(ID, st.integers(), st.none(), st.floats(), st.booleans()), max_size=5),
                      st.none(), st.integers(), ID)
    doc = draw(st.dictionaries(ID, value, max_size=8))
    text = json.dumps(doc)
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]  # truncated JSON
    return text.encode(), ".json"


EVENT_HEADERS = ["user_id,item_id,ts,rating"] * 3 + ["userId,movieId,rating,timestamp"] * 3 + [
    "timestamp,visitorid,event,itemid"] * 3 + ["a,b,c", "user,item,time,timestamp", ""]


@st.composite
def events_csv_file(draw):
    header = draw(st.sampled_from(EVENT_HEADERS))
    sep = draw(st.sampled_from([",", "\t"]))
    n = max(1, header.count(",") + 1)

    careless = draw(st.sampled_from([False] * 3 + [True]))  # a writer that forgets to quote

    def quote(v):
        needs = any(c in v for c in (sep, '"', "\n", "\r"))
        return '"' + v.replace('"', '""') + '"' if needs and not careless else v

    width = st.sampled_from([n] * 5 + [n - 1, n + 1])  # mostly the header's width, sometimes not
    row = width.flatmap(lambda k: st.lists(st.one_of(ID, TS), min_size=k, max_size=k)).map(
        lambda vs: sep.join(map(quote, vs)))
    raw = assemble([header.replace(",", sep), *draw(lines_of(row))], **{k: draw(v) for k, v in TEXT_OPTS.items()})
    gz = draw(st.sampled_from(["plain"] * 4 + ["gz", "cut"]))
    if gz != "plain":  # gzipped, maybe cut anywhere (a truncated download)
        raw = gzip.compress(raw)
        raw = raw[: draw(st.integers(0, len(raw)))] if gz == "cut" else raw
        return raw, (".csv.gz" if sep == "," else ".tsv.gz")
    return raw, (".csv" if sep == "," else ".tsv")


@st.composite
def events_jsonl_file(draw):
    keys = draw(st.sampled_from([("user_id", "item_id", "ts"), ("userId", "movieId", "timestamp"),
                                 ("visitorid", "itemid", "timestamp")] * 2 + [("a", "b", "c")]))
    value = st.one_of(ID, TS, st.integers(), st.floats(), st.none(), st.booleans(), st.lists(st.integers(), max_size=2))
    row = st.tuples(value, value, value).map(lambda vs: json.dumps(dict(zip(keys, vs))))
    return assemble(draw(lines_of(row)), **{k: draw(v) for k, v in TEXT_OPTS.items()}), ".jsonl"


@st.composite
def events_parquet_file(draw):
    n = draw(st.integers(0, 12))
    cols = {
        draw(st.sampled_from(["user_id", "userId", "customer_id"])): draw(st.lists(st.one_of(ID, st.none()), min_size=n, max_size=n)),
        draw(st.sampled_from(["item_id", "product_id", "asin"])): draw(st.lists(st.one_of(st.integers(-5, 10**12), st.none()), min_size=n, max_size=n)),
        draw(st.sampled_from(["ts", "timestamp", "event_time"])): draw(st.lists(st.one_of(st.floats(), st.none()), min_size=n, max_size=n)),
    }  # fmt: skip
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    raw = buf.getvalue()
    damage = draw(st.integers(0, 5))
    if damage == 1:
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif damage == 2:
        pos = draw(st.integers(0, max(0, len(raw) - 1)))
        raw = raw[:pos] + bytes([raw[pos] ^ 0x5A]) + raw[pos + 1:] if raw else raw
    return raw, ".parquet"


RANDOM_BYTES = st.binary(max_size=400)
FORMATS = {
    "recbole": recbole_file(),
    "seqtxt": seqtxt_file(),
    "amazon-json": amazon_file(),
    "usermap-json": usermap_file(),
    "events-csv": events_csv_file(),
    "events-jsonl": events_jsonl_file(),
    "events-parquet": events_parquet_file(),
}


def check_file(fmt: str, raw: bytes, suffix: str) -> str:
    """Ingest the bytes; assert the contract; return 'refused' or 'accounted'."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input{suffix}"
        path.write_bytes(raw)
        db = Path(tmp) / "w.duckdb"
        try:
            r = ingest(fmt.split("-")[0] if fmt.startswith("events") else fmt, str(path), str(db))
        except (ValueError, OSError) as err:  # refused: a clear one-line message naming the file
            message = str(err)
            assert str(path) in message or "column map" in message, message
            assert "\n" not in message.strip() or message.startswith(str(path)), message
            assert not db.exists() and not [p for p in Path(tmp).iterdir() if ".new-" in p.name]
            return "refused"
        assert r.accepted + r.quarantined == r.rows_read
        assert set(r.quarantine_reasons) <= set(REASONS) and sum(r.quarantine_reasons.values()) == r.quarantined
        with duckdb.connect(str(db), read_only=True) as con:
            stored = con.execute("SELECT count(*) FROM raw_interactions").fetchone()[0]
            quarantined = con.execute("SELECT count(*), count(reason), count(raw) FROM quarantine").fetchone()
        assert stored == r.accepted and quarantined == (r.quarantined,) * 3  # every row: a reason and its text
        return "accounted"


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_reader_accounts_for_every_row_or_refuses_the_file(fmt):
    outcomes = []

    @SETTINGS
    @given(FORMATS[fmt])
    def run(case):
        outcomes.append(check_file(fmt, *case))

    run()
    # the generators make files with rows to account for, not only files to refuse
    assert outcomes.count("accounted") >= 3, outcomes


@pytest.mark.parametrize("fmt, suffix", [("recbole", ".inter"), ("seqtxt", ".txt"), ("amazon-json", ".json.gz"),
                                         ("usermap-json", ".json"), ("events", ".csv"), ("events", ".parquet"),
                                         ("events", ".jsonl")])  # fmt: skip
def test_random_bytes_never_crash(fmt, suffix):
    @settings(max_examples=10, deadline=None, derandomize=True)
    @given(RANDOM_BYTES)
    def run(raw):
        check_file(fmt if fmt != "events" else "events-x", raw, suffix)

    run()


@pytest.mark.parametrize("content, suffix, fmt", [
    (b"\x1f\x8b\x08\x00garbage", ".json.gz", "amazon-json"),
    (gzip.compress(b'{"reviewerID": "u", "asin": "a", "unixReviewTime": 1}\n' * 50)[:60], ".json.gz", "amazon-json"),
    (b"caf\xe9 1 2\n", ".txt", "seqtxt"),
    (b"", ".csv", "events"),
    (b"who,what,when\n", ".csv", "events"),
    (b"PAR1\x00\x00", ".parquet", "events"),
])  # fmt: skip
def test_cli_prints_one_line_and_exits_2_for_an_unreadable_file(tmp_path, capsys, content, suffix, fmt):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    code = cli.main(["ingest", "--format", fmt, "--path", str(path), "--db", str(tmp_path / "w.duckdb"), "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("slmrec ingest: error:") and str(path) in err
    assert not os.path.exists(tmp_path / "w.duckdb")
