"""Artifact cards: trace a chain back to raw files; --verify catches a tampered file and a lying card."""

import json

from slmrec import cli
from slmrec.lineage import card_digest, content_hash, mismatches, read_card, sha256_file, trace, write_card


def build_chain(root):
    raw = root / "data" / "raw.txt"
    raw.parent.mkdir(parents=True)
    raw.write_text("u1 1 2 3\n")
    snap = root / "data" / "snap"
    snap.mkdir()
    (snap / "x.parquet").write_bytes(b"snapshot-bytes")
    write_card(snap, "interactions", parents=[raw], reproducible=True)
    model = root / "models" / "m"
    model.mkdir(parents=True)
    (model / "model.pt").write_bytes(b"weights")
    write_card(model, "student", params={"lr": 1e-3}, parents=[snap], metrics={"ndcg@10": 0.1})
    return raw, snap, model


def test_card_records_hashes_and_parents(tmp_path):
    raw, snap, model = build_chain(tmp_path)
    card = read_card(model)
    assert card["content_hash"] == content_hash(model) and card["params"] == {"lr": 1e-3}
    assert card["parents"] == [{"kind": "artifact", "artifact": "interactions", "path": str(snap),
                                "content_hash": content_hash(snap)}]
    assert "created_at" in card and "git_commit" in card and "torch" in card["versions"]
    snap_card = read_card(snap)
    assert "created_at" not in snap_card and "git_commit" not in snap_card  # reproducible: byte-stable
    assert snap_card["parents"][0] == {"kind": "file", "path": str(raw), "content_hash": sha256_file(raw)}


def test_reproducible_card_is_byte_identical(tmp_path):
    raw, snap, _ = build_chain(tmp_path)
    first = (snap / "card.json").read_bytes()
    write_card(snap, "interactions", parents=[raw], reproducible=True)
    assert (snap / "card.json").read_bytes() == first


def test_trace_and_verify_pass_on_an_intact_chain(tmp_path):
    raw, snap, model = build_chain(tmp_path)
    node = trace(model, verify=True)
    assert [node.name, node.parents[0].name, node.parents[0].parents[0].name] == ["student", "interactions", "raw.txt"]
    assert mismatches(node) == []


def test_verify_names_a_tampered_raw_file(tmp_path, capsys):
    raw, snap, model = build_chain(tmp_path)
    raw.write_text("u1 1 2 4\n")  # one byte changed upstream
    code = cli.main(["lineage", str(model), "--verify", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["mismatches"] == [str(raw)]


def test_verify_names_an_artifact_whose_bytes_changed(tmp_path, capsys):
    raw, snap, model = build_chain(tmp_path)
    (snap / "x.parquet").write_bytes(b"other bytes")
    assert cli.main(["lineage", str(model), "--verify"]) == 1
    err = capsys.readouterr().err
    assert f"HASH MISMATCH at {snap}" in err


def test_verify_catches_a_card_that_lies_about_its_own_directory(tmp_path, capsys):
    raw, snap, model = build_chain(tmp_path)
    card = json.loads((model / "card.json").read_text())
    card["content_hash"] = "0" * 64
    (model / "card.json").write_text(json.dumps(card))
    assert cli.main(["lineage", str(model), "--verify"]) == 1  # the edit breaks the card's own digest
    assert f"CORRUPTED CARD: {model / 'card.json'}" in capsys.readouterr().err
    card["card_sha256"] = card_digest(card)  # a card rewritten whole, digest included, still lies
    (model / "card.json").write_text(json.dumps(card))
    assert cli.main(["lineage", str(model), "--verify"]) == 1
    assert f"HASH MISMATCH at {model}" in capsys.readouterr().err


def test_without_verify_a_tampered_chain_still_prints(tmp_path, capsys):
    raw, snap, model = build_chain(tmp_path)
    raw.write_text("changed")
    assert cli.main(["lineage", str(model)]) == 0
    assert "student [artifact]" in capsys.readouterr().out


def test_missing_upstream_file_is_a_clear_error(tmp_path, capsys):
    raw, snap, model = build_chain(tmp_path)
    raw.unlink()
    assert cli.main(["lineage", str(model), "--verify"]) == 2
    assert "is gone" in capsys.readouterr().err
