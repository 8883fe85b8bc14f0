"""Inference precision modes for a trained LLMRec (issue 9; the paper: SLMRec is orthogonal to quantization).

    fp32   the merged model as trained on CPU
    bf16   trunk weights and activations in bfloat16; item maps and scores stay float32 (bf16 dot products
           over thousands of items tie often, and ties count against the target: see eval/evaluator.py)
    int8   torch dynamic quantization of the trunk's Linear layers: int8 weights, activations quantized per
           batch, accumulation in int32 (CPU)

Each mode merges LoRA into the base weights first (`merge_for_inference`) and recomputes the cached
instruction-prefix keys/values with the converted trunk, so the prefix and the suffix see the same weights.
bench/bench_inference.py measures accuracy (NDCG@10 with a paired CI against fp32) and users/s of each.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from slmrec.models.llmrec import LLMRec


def _fp32(model: LLMRec) -> LLMRec:
    return model


def _bf16(model: LLMRec) -> LLMRec:
    model.base.to(torch.bfloat16)
    return model


def _int8(model: LLMRec) -> LLMRec:
    if model.base.embed_tokens.weight.device.type != "cpu":
        raise ValueError("inference mode int8 (torch dynamic quantization) runs on CPU only; use bf16 on a GPU")
    if model.base.embed_tokens.weight.dtype != torch.float32:
        raise ValueError("inference mode int8 quantizes a float32 trunk; this model's trunk is "
                         f"{model.base.embed_tokens.weight.dtype}")
    # torch 2.13 marks torch.ao eager quantization deprecated in favour of torchao (another dependency, and
    # its CPU int8 kernels were not measured here); the fbgemm dynamic path below still ships and is tested
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(torch.ao.quantization is deprecated|quantize_per_tensor).*")
        torch.ao.quantization.quantize_dynamic(model.base.layers, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return model


INFERENCE_MODES = {"fp32": _fp32, "bf16": _bf16, "int8": _int8}


@torch.no_grad()
def prepare_for_inference(model: LLMRec, mode: str = "fp32") -> LLMRec:
    """Merge LoRA, convert the trunk to `mode` (in place) and cache the prefix with the converted weights."""
    if mode not in INFERENCE_MODES:
        raise ValueError(f"inference mode {mode!r} unknown; known: {sorted(INFERENCE_MODES)}")
    model.merge_for_inference()
    return INFERENCE_MODES[mode](model).cache_prefix()  # the prefix as the converted trunk computes it


__all__ = ["INFERENCE_MODES", "prepare_for_inference"]
