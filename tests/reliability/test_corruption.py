"""Damaged files are refused with a clear error, never loaded as valid; a full disk while writing a
checkpoint leaves the previous one intact (issue 10, item 4)."""

import errno
import json
import random
import resource
import signal

import pytest
import torch
from faults import DiskFull, corrupt

from slmrec.config import SASRecConfig, SequenceConfig
from slmrec.data.sequences import SPLIT_FILES, build_splits, load_splits
from slmrec.lineage import CorruptCardError, read_card, write_card
from slmrec.models.sasrec import SASRec
from slmrec.train import checkpoint as ck
from slmrec.train.checkpoint import CorruptCheckpointError, load_checkpoint, save_atomic

TRIALS = 12  # per file kind and damage kind


def sasrec_checkpoint(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = SASRec(40, SASRecConfig(hidden=16, layers=1, heads=1, max_len=8, inner_size=32))
    return {"model_class": ck.model_class_path(model), "model_config": model.config_dict(),
            "model_state": model.trainable_state_dict(), "step": seed}


def tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["truncate", "flip"])
def test_damaged_checkpoint_is_refused_or_loads_unchanged(tmp_path, kind):
    good = tmp_path / "good.pt"
    save_atomic(sasrec_checkpoint(), good)
    original = load_checkpoint(good)["model_state"]
    rng, refused = random.Random(kind), 0
    for trial in range(TRIALS):
        bad = tmp_path / f"bad{trial}.pt"
        bad.write_bytes(good.read_bytes())
        what = corrupt(bad, rng, kind)
        try:
            loaded = load_checkpoint(bad)
        except CorruptCheckpointError as err:
            assert str(bad) in str(err) and "not loaded" in str(err)
            refused += 1
            continue
        # a damaged byte the archive does not use (alignment padding) may leave the contents intact:
        # then, and only then, may it load
        assert tensors_equal(loaded["model_state"], original), f"loaded a damaged checkpoint: {what}"
    assert refused >= TRIALS - 2  # almost every random damage hits the data or the structure


def test_bit_flip_in_a_weight_that_torch_load_would_accept(tmp_path):
    path = tmp_path / "c.pt"
    save_atomic(sasrec_checkpoint(), path)
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)  # the record's bytes
    data[start + info.file_size // 2] ^= 0x01  # one bit of one float
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # torch alone loads it without a word
    with pytest.raises(CorruptCheckpointError, match="CRC mismatch"):
        load_checkpoint(path)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.99])
def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fraction):
    path = tmp_path / "last.pt"
    save_atomic(sasrec_checkpoint(1), path)
    before = path.read_bytes()
    full = DiskFull(fraction)
    monkeypatch.setattr(torch, "save", full.wrap(torch.save))
    with pytest.raises(OSError) as err:
        save_atomic(sasrec_checkpoint(2), path)
    assert err.value.errno == errno.ENOSPC and full.calls == 1
    monkeypatch.undo()
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left behind


def test_file_size_limit_hit_by_the_kernel_keeps_the_previous_checkpoint(tmp_path):
    """A real write(2) failure (EFBIG from RLIMIT_FSIZE), not a patched one, in the middle of torch.save."""
    path = tmp_path / "last.pt"
    save_atomic(sasrec_checkpoint(1), path)
    before = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal's default kill
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 2, hard))
        with pytest.raises(OSError) as err:
            save_atomic(sasrec_checkpoint(2), path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert err.value.errno in (errno.EFBIG, errno.ENOSPC) or "write" in str(err.value).lower()
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_disk_full_during_training_then_resume(tmp_path, monkeypatch):
    """fit() stops on the failed checkpoint write; last.pt is the previous one; a re-run finishes identically."""
    import train_worker

    from slmrec.train.loop import fit

    torch.set_num_threads(1)
    train, valid = train_worker.data()

    def model():
        torch.manual_seed(0)
        return SASRec(train_worker.N_ITEMS, SASRecConfig(hidden=16, layers=1, heads=1, dropout=0.2,
                                                         max_len=train_worker.MAX_LEN, inner_size=32))

    quiet = dict(log=lambda s: None, restore_best=False)
    fit(model(), train, valid, train_worker.CONFIG, tmp_path / "ref", **quiet)
    real_save, calls = torch.save, {"n": 0}

    def flaky_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 7:  # the 7th checkpoint write hits a full disk
            return DiskFull(0.5).wrap(real_save)(obj, f, *a, **k)
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", flaky_save)
    with pytest.raises(OSError, match="No space left"):
        fit(model(), train, valid, train_worker.CONFIG, tmp_path / "run", **quiet)
    monkeypatch.undo()
    assert not list((tmp_path / "run").glob(".*.tmp"))  # the half-written temp file is gone
    survived = load_checkpoint(tmp_path / "run" / "last.pt")
    assert 1 <= survived["step"] <= 6  # the failed write (~step 6) left the previous, whole checkpoint
    fit(model(), train, valid, train_worker.CONFIG, tmp_path / "run", **quiet)
    a, b = load_checkpoint(tmp_path / "ref" / "last.pt"), load_checkpoint(tmp_path / "run" / "last.pt")
    assert a["step"] == b["step"] == 18 and tensors_equal(a["model_state"], b["model_state"])


# ----------------------------------------------------------------------------- splits and cards


@pytest.fixture
def split_dir(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    snap = tmp_path / "snap"
    snap.mkdir()
    rows = [(f"u{u}", f"i{(u * 3 + k) % 17}", k) for u in range(30) for k in range(6)]
    n = len(rows)
    pq.write_table(pa.table({
        "user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "ts": pa.array([r[2] for r in rows], pa.int64()),
        "source_file": ["f"] * n, "row_number": pa.array(range(1, n + 1), pa.int64()),
        "item_pos": pa.array([0] * n, pa.int32())}), snap / "interactions.parquet")  # fmt: skip
    pq.write_table(pa.table({"item_id": pa.array([], pa.string()), "title": pa.array([], pa.string())}),
                   snap / "items.parquet")
    out = tmp_path / "splits"
    build_splits(snap, SequenceConfig(k_core=0, out_dir=str(out)))
    return out


@pytest.mark.parametrize("kind", ["truncate", "flip"])
def test_damaged_split_file_or_stats_is_refused(split_dir, kind):
    import shutil

    rng = random.Random(kind)
    pristine = split_dir.parent / "pristine"
    shutil.copytree(split_dir, pristine)
    for trial in range(TRIALS):
        name = rng.choice([*SPLIT_FILES, "stats.json"])
        shutil.rmtree(split_dir)
        shutil.copytree(pristine, split_dir)
        what = corrupt(split_dir / name, rng, kind)
        before = (pristine / name).read_bytes()
        if (split_dir / name).read_bytes() == before:
            continue  # no change (a 0-byte truncation point of an empty file cannot happen; defensive)
        with pytest.raises(ValueError) as err:
            load_splits(split_dir)
        assert "corrupted" in str(err.value) or "differs from stats.json" in str(err.value), (name, what)


@pytest.mark.parametrize("kind", ["truncate", "flip"])
def test_damaged_card_is_refused_or_reads_unchanged(tmp_path, kind):
    art = tmp_path / "art"
    art.mkdir()
    (art / "model.pt").write_bytes(b"weights")
    card = write_card(art, "sasrec", params={"lr": 0.001, "layers": 2}, metrics={"ndcg@10": 0.05})
    good = (art / "card.json").read_bytes()
    rng, refused = random.Random(kind), 0
    for trial in range(TRIALS):
        (art / "card.json").write_bytes(good)
        what = corrupt(art / "card.json", rng, kind)
        try:
            got = read_card(art)
        except CorruptCardError as err:
            assert "card.json" in str(err)
            refused += 1
            continue
        assert got == card, f"a damaged card read as valid: {what}"  # only whitespace-for-whitespace damage
    assert refused >= TRIALS - 2


def test_card_with_a_changed_value_is_refused(tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    write_card(art, "sasrec", metrics={"ndcg@10": 0.05})
    text = (art / "card.json").read_text().replace("0.05", "0.09")
    (art / "card.json").write_text(text)
    with pytest.raises(CorruptCardError, match="no longer match its card_sha256"):
        read_card(art)
    (art / "card.json").write_text(json.dumps({"artifact": "x"}))
    with pytest.raises(CorruptCardError, match="missing or of the wrong type"):
        read_card(art)
