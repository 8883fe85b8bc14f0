"""Inference precision modes: fp32 is the merged model, bf16 and int8 stay close to it, bad requests refused."""

import pytest
import torch
from test_llmrec import ROWS, batch_of, model, randomize_lora

from slmrec.models.inference import INFERENCE_MODES, prepare_for_inference


def scores(mode: str) -> tuple[torch.Tensor, object]:
    m = model(lora_dropout=0.0).eval()
    randomize_lora(m)
    with torch.no_grad():
        plain = m.full_sort_predict(batch_of(ROWS))
        prepare_for_inference(m, mode)
        return plain, m.full_sort_predict(batch_of(ROWS)), m


def test_fp32_mode_is_the_merged_model():
    plain, fast, m = scores("fp32")
    assert m.merged
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode, tol", [("bf16", 0.03), ("int8", 0.05)])
def test_reduced_precision_modes_stay_close_and_score_in_float32(mode, tol):
    plain, fast, m = scores(mode)
    assert fast.dtype == torch.float32 and torch.isneginf(fast[:, 0]).all()
    err = (fast[:, 1:] - plain[:, 1:]).abs().max() / plain[:, 1:].abs().max()
    assert 0 < err <= tol  # converted (not a no-op), and close
    layer = m.base.layers[0].mlp.down_proj
    if mode == "int8":
        assert "quantized" in type(layer).__module__  # the Linear layers were replaced
        assert type(m.input_map).__module__.startswith("torch.nn.modules")  # the item maps were not
    else:
        assert layer.weight.dtype == torch.bfloat16 and m.input_map.weight.dtype == torch.float32


def test_unknown_mode_and_int8_of_a_bf16_trunk_are_refused():
    m = model()
    with pytest.raises(ValueError, match="unknown; known"):
        prepare_for_inference(m, "fp8")
    prepare_for_inference(m, "bf16")
    with pytest.raises(ValueError, match="quantizes a float32 trunk"):
        INFERENCE_MODES["int8"](m)


def test_cli_choices_match_the_registered_modes():
    from slmrec.serve.commands import PRECISIONS

    assert set(PRECISIONS) == set(INFERENCE_MODES)
