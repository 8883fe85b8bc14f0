import random

import pytest
import torch
import torch.nn.functional as F

from slmrec.config import LLMRecConfig, TrainConfig
from slmrec.models.backbones import load_backbone
from slmrec.models.llmrec import LLMRec, attention_bias
from slmrec.data.examples import make_eval_examples, make_train_examples
from slmrec.train.loop import fit

torch.set_num_threads(1)  # tiny matrices: one thread is fastest and fair to the other jobs on the machine
N_ITEMS, D_ID, MAX_LEN = 30, 16, 6
QUIET = dict(log=lambda s: None)


def cfg(**kw) -> LLMRecConfig:
    base = dict(max_len=MAX_LEN, instruction="Next item?", response="=>", objective="all")
    return LLMRecConfig(**{**base, **kw})


def table(n_items=N_ITEMS, d=D_ID, seed=0) -> torch.Tensor:
    return torch.randn(n_items + 1, d, generator=torch.Generator().manual_seed(seed))


def model(seed=0, role="teacher", **kw) -> LLMRec:
    torch.manual_seed(seed)
    return LLMRec.build(cfg(**kw), role, table())


def batch_of(rows: list[list[int]], length: int = MAX_LEN) -> dict[str, torch.Tensor]:
    """Left-padded batch; targets: the next item of each row = its item + 1 (the planted successor)."""
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    for r, row in enumerate(rows):
        if row:
            ids[r, length - len(row) :] = torch.tensor(row)
    targets = torch.where(ids > 0, ids % N_ITEMS + 1, torch.zeros_like(ids))
    return {"input_ids": ids, "targets": targets, "target": targets[:, -1], "idx": torch.arange(len(rows))}


def randomize_lora(m: LLMRec, seed=1) -> None:
    """peft starts LoRA B at 0 (a no-op adapter): give it weights so merging has an effect."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


ROWS = [[1, 2, 3, 4, 5, 6], [7, 8], [9], [10, 11, 12, 13]]


def test_shapes_and_padding_column():
    m = model().eval()
    b = batch_of(ROWS)
    with torch.no_grad():
        u = m(b)
        scores = m.full_sort_predict(b)
        items = torch.tensor([[1, 5, 30], [2, 2, 3], [4, 5, 6], [7, 8, 9]])
        picked = m.predict(b, items)
    assert u.shape == (4, D_ID)
    assert scores.shape == (4, N_ITEMS + 1)
    assert torch.isneginf(scores[:, 0]).all() and torch.isfinite(scores[:, 1:]).all()
    torch.testing.assert_close(picked, scores.gather(1, items))


def test_frozen_and_trainable_parts():
    m = model()
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable, "nothing trains"
    for name in trainable:
        assert name.startswith(("input_map.", "score_head.")) or ".lora_" in name, name
    assert any("lora_A" in n and "mlp.gate_proj" in n for n in trainable)
    assert not any("self_attn" in n for n in trainable)  # LoRA only on the MLP projections
    assert not m.base.embed_tokens.weight.requires_grad
    assert "item_table" not in dict(m.named_parameters())  # a frozen buffer
    counts = m.parameter_counts()
    assert counts["trainable"] == sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert counts["total"] > counts["trainable"] > 0
    assert counts["item_table"] == (N_ITEMS + 1) * D_ID
    state = m.trainable_state_dict()  # what a checkpoint stores: trainable weights + the item table
    assert "item_table" in state and not any("embed_tokens" in k or "base_layer" in k for k in state)


def test_padding_does_not_change_a_users_scores():
    """Masked padding + positions counted over real tokens: 3 items in 6 slots == the same 3 items in 3 slots."""
    wide, narrow = model(max_len=6).eval(), model(max_len=3).eval()
    randomize_lora(wide)
    narrow.load_trainable_state_dict(wide.trainable_state_dict())
    randomize_lora(narrow)
    rows = [[4, 5, 6], [7, 8, 9]]
    with torch.no_grad():
        a = wide.full_sort_predict(batch_of(rows, 6))
        b = narrow.full_sort_predict(batch_of(rows, 3))
        alone = wide.full_sort_predict(batch_of(rows[:1], 6))  # batch neighbours don't matter either
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[:1], alone, rtol=1e-5, atol=1e-5)


def test_batch_longer_or_shorter_than_max_len_is_aligned():
    m = model().eval()
    with torch.no_grad():
        ref = m.full_sort_predict(batch_of([[1, 2, 3, 4, 5, 6]]))
        longer = m.full_sort_predict(batch_of([[20, 21, 1, 2, 3, 4, 5, 6]], 8))  # only the last 6 are used
        short = m.full_sort_predict(batch_of([[2, 3]], 2))
        short_ref = m.full_sort_predict(batch_of([[2, 3]]))
    torch.testing.assert_close(ref, longer)
    torch.testing.assert_close(short, short_ref)


def test_all_objective_is_causal():
    """The state at item i must not see items after i (the `all` objective would leak the target)."""
    m = model().eval()
    randomize_lora(m)
    a, b = batch_of([[1, 2, 3, 4, 5, 6]]), batch_of([[1, 2, 3, 9, 9, 9]])
    with torch.no_grad():
        ea, eb = m.encode(a, output_hidden_states=True), m.encode(b, output_hidden_states=True)
    torch.testing.assert_close(ea.final[:, :3], eb.final[:, :3])
    assert not torch.allclose(ea.final[:, 3:6], eb.final[:, 3:6])
    assert len(ea.layers) == m.n_layers and ea.layers[0].shape == ea.final.shape


@pytest.mark.parametrize("objective", ["all", "last"])
def test_loss_matches_the_objective_by_hand(objective):
    m = model(objective=objective, lora_dropout=0.0)  # deterministic: encode() below must see the same net
    randomize_lora(m)
    b = batch_of(ROWS)
    loss = m.calculate_loss(b)
    enc = m.encode(b)
    u = m.score_head(enc.final)  # (B, L+R, d)
    logits = u @ m.item_table.T  # (B, L+R, N+1)
    if objective == "last":  # final response position -> target
        expected = F.cross_entropy(logits[:, -1, 1:], b["target"] - 1)
    else:  # every real item slot -> its successor, averaged over real positions
        real = b["input_ids"] > 0
        expected = F.cross_entropy(logits[:, :MAX_LEN][real][:, 1:], b["targets"][real] - 1)
    torch.testing.assert_close(loss.loss, expected)
    assert loss.terms["ce"] == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("objective", ["all", "last"])
def test_merged_prefix_cached_scores_equal_plain_scores(objective):
    m = model(objective=objective).eval()
    randomize_lora(m)
    b = batch_of(ROWS + [[]])  # a cold user (no history) too
    with torch.no_grad():
        plain = m.full_sort_predict(b)
        _, plain_layers = m(b, output_hidden_states=True)
        base_only = model(objective=objective).eval()  # same input map/head seed, LoRA B = 0
        base_only.input_map.load_state_dict(m.input_map.state_dict())
        base_only.score_head.load_state_dict(m.score_head.state_dict())
        assert not torch.allclose(base_only.full_sort_predict(b), plain, atol=1e-3)  # the LoRA weights matter
        m.merge_for_inference()
        merged = m.full_sort_predict(b)
        _, merged_layers = m(b, output_hidden_states=True)
    assert m.merged and not any(".lora_" in n for n, _ in m.named_parameters())
    torch.testing.assert_close(merged, plain, rtol=1e-4, atol=1e-4)
    for x, y in zip(merged_layers, plain_layers):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError, match="merged"):
        m.calculate_loss(b)


def test_bfloat16_trunk():
    """The GPU setting (bf16 trunk, fp32 LoRA/maps/scores), run on CPU."""
    m = model(dtype="bfloat16", device="cpu")
    assert m.base.embed_tokens.weight.dtype == torch.bfloat16 and m.input_map.weight.dtype == torch.float32
    b = batch_of(ROWS)
    out = m.calculate_loss(b)
    out.loss.backward()
    assert torch.isfinite(out.loss) and m.input_map.weight.grad.abs().sum() > 0
    randomize_lora(m)
    m.eval()
    with torch.no_grad():
        plain = m.full_sort_predict(b)
        merged = m.merge_for_inference().full_sort_predict(b)
    assert plain.dtype == torch.float32
    # bf16 rounding of the merged weights
    assert (merged[:, 1:] - plain[:, 1:]).abs().max() <= 0.02 * plain[:, 1:].abs().max()


def test_prefix_cache_skips_the_instruction_positions():
    m = model().eval()
    n_prefix = m.prefix_ids.shape[0]
    seen = []
    hook = m.base.layers[0].register_forward_hook(lambda mod, args, out: seen.append(out.shape[1]))
    with torch.no_grad():
        m.full_sort_predict(batch_of(ROWS))
        m.merge_for_inference()
        seen.clear()
        m.full_sort_predict(batch_of(ROWS))
    hook.remove()
    assert seen == [MAX_LEN + m.response_ids.shape[0]]  # the n_prefix instruction positions are not recomputed
    assert n_prefix == len("Next item?")


SHORT_ROWS = [[1, 2], [3], [], [4, 5, 6]]  # longest history 3 of MAX_LEN = 6 slots, and a cold user
PLAIN = dict(trim_slots=False, prefix_once=False)  # every slot, the instruction once per user


@pytest.mark.parametrize("objective", ["all", "last"])
@pytest.mark.parametrize("levers", [dict(trim_slots=True, prefix_once=False), dict(trim_slots=False, prefix_once=True),
                                    dict(trim_slots=True, prefix_once=True)])
def test_speed_levers_change_nothing_but_float_rounding(objective, levers):
    """Trimmed slots and a once-per-batch prefix: the plain path's loss, gradients, scores and layer states."""
    plain = model(objective=objective, lora_dropout=0.0, **PLAIN)
    randomize_lora(plain)
    fast = model(objective=objective, lora_dropout=0.0, **levers)
    fast.load_trainable_state_dict(plain.trainable_state_dict())
    b = batch_of(SHORT_ROWS)
    losses = []
    for m in (plain, fast):
        m.zero_grad()
        out = m.calculate_loss(b)
        out.loss.backward()
        losses.append(out.loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    grads = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora_" in n)  # the prefix's gradient reaches LoRA
    for n, p in fast.named_parameters():
        if p.requires_grad:
            scale = float(grads[n].abs().max())  # float rounding: relative to the tensor's largest entry
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-5 * scale + 1e-8, msg=n)
    with torch.no_grad():
        for m in (plain, fast):
            m.eval()
        torch.testing.assert_close(fast.full_sort_predict(b), plain.full_sort_predict(b), rtol=1e-5, atol=1e-5)
        (_, fl), (_, pl) = fast(b, output_hidden_states=True), plain(b, output_hidden_states=True)
        width = 3 if levers["trim_slots"] else MAX_LEN
        for x, y in zip(fl, pl):  # the trimmed path's states are the last `width` slots (+ response) of the plain one
            torch.testing.assert_close(x, y[:, MAX_LEN - width :], rtol=1e-4, atol=1e-5)


def test_levers_shrink_the_work_of_each_layer():
    """What each decoder layer runs on in training: (B, P+L+R) plainly; (1, P) and (B, S_b+R) with both levers."""
    seen = []
    shapes = {}
    for name, levers in (("plain", PLAIN), ("fast", dict(trim_slots=True, prefix_once=True))):
        m = model(**levers)
        hook = m.base.layers[0].register_forward_hook(lambda mod, args, out: seen.append(tuple(out.shape[:2])))
        m.calculate_loss(batch_of(SHORT_ROWS))
        hook.remove()
        shapes[name], seen = seen, []
    n_prefix, n_response = m.prefix_ids.shape[0], m.response_ids.shape[0]
    assert shapes["plain"] == [(4, n_prefix + MAX_LEN + n_response)]
    assert shapes["fast"] == [(1, n_prefix), (4, 3 + n_response)]
    assert m.slots_for(batch_of([[], []])["input_ids"]) == 1  # cold users still get the slot the `all` objective reads


def test_student_starts_from_the_pretrained_backbone():
    teacher, student = model(role="teacher"), model(role="student")
    assert teacher.n_layers == 4 and student.n_layers == 2
    pretrained = load_backbone(cfg(), 4).model
    randomize_lora(teacher)  # "fine-tune" the teacher: the student must not inherit it
    for i in range(2):
        for name, w in pretrained.layers[i].state_dict().items():
            module, _, leaf = name.rpartition(".")
            got = student.base.layers[i].get_submodule(module)
            got = getattr(got, "base_layer", got)  # LoRA wraps the projections
            torch.testing.assert_close(getattr(got, leaf), w)
    assert all(
        torch.count_nonzero(p) == 0 for n, p in student.named_parameters() if "lora_B" in n
    )  # its own fresh LoRA


def test_checkpoint_round_trip():
    m = model()
    randomize_lora(m)
    b = batch_of(ROWS)
    rebuilt = LLMRec.from_config_dict(m.config_dict())
    rebuilt.load_trainable_state_dict(m.trainable_state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval().full_sort_predict(b), m.eval().full_sort_predict(b))


# ---------------------------------------------------------------- item adapters


def randomize_adapter(m: LLMRec, seed=2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.item_adapter.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("adapter", ["residual_mlp", "offset"])
def test_item_adapters_start_as_the_frozen_table_and_train(adapter):
    plain, adapted = model(seed=4), model(seed=4, item_adapter=adapter, item_adapter_hidden=8)
    randomize_lora(plain)
    randomize_lora(adapted)
    b = batch_of(ROWS)
    with torch.no_grad():  # zero-initialised: the same model as without an adapter, the same random init
        torch.testing.assert_close(adapted.eval().full_sort_predict(b), plain.eval().full_sort_predict(b))
    extra = set(adapted.trainable_state_dict()) - set(plain.trainable_state_dict())
    assert extra and all(k.startswith("item_adapter.") for k in extra)  # stored in the checkpoint
    assert not any(k.startswith("item_adapter.") for k in plain.trainable_state_dict())  # none: old checkpoints load
    adapted.train().calculate_loss(b).loss.backward()
    down = adapted.item_adapter.down.weight if adapter == "residual_mlp" else adapted.item_adapter.offset
    assert down.grad is not None and down.grad.abs().sum() > 0  # the loss reaches the zero-initialised part

    randomize_adapter(adapted)
    rebuilt = LLMRec.from_config_dict(adapted.config_dict())
    rebuilt.load_trainable_state_dict(adapted.trainable_state_dict())
    with torch.no_grad():
        moved = adapted.eval().full_sort_predict(b)
        torch.testing.assert_close(rebuilt.eval().full_sort_predict(b), moved)
        assert (moved - plain.full_sort_predict(b))[:, 1:].abs().max() > 1e-3  # the adapter changed the scores
        # reading and scoring both use the adapted vectors: scores = u . items()
        torch.testing.assert_close(moved[:, 1:], adapted(b) @ adapted.items()[1:].T)
    with pytest.raises(ValueError, match="unknown adapter 'ids'"):
        model(item_adapter="ids")


def test_item_offsets_learn_items_the_frozen_table_cannot_tell_apart(tmp_path):
    """Every item gets the same frozen vector (zero): without an adapter no item can be told from another (the
    scores tie), while per-item offsets learn the planted ring walk."""
    seqs = planted(120)
    train = make_train_examples([s[:-2] for s in seqs], MAX_LEN)
    valid = make_eval_examples([(s[:-2], s[-2]) for s in seqs], MAX_LEN)
    same = torch.zeros(N_ITEMS + 1, D_ID)
    tc = TrainConfig(epochs=6, batch_size=16, lr=1e-2, patience=0, metric="hr@10", eval_batch_size=256)
    best = {}
    for adapter in ("none", "offset"):
        torch.manual_seed(0)
        m = LLMRec.build(cfg(item_adapter=adapter), "student", same)
        best[adapter] = fit(m, train, valid, tc, tmp_path / adapter, **QUIET).best_metric
    assert best["offset"] >= 0.9, best
    assert best["none"] <= 0.5, best


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown objective"):
        model(objective="middle")
    with pytest.raises(ValueError, match="role"):
        LLMRec.build(cfg(), "assistant", table())
    with pytest.raises(ValueError, match="n_layers must be in 1..4"):
        LLMRec(cfg(), 5, table())
    with pytest.raises(ValueError, match="at least one token"):
        LLMRec.build(cfg(response=""), "student", table())
    m = model()
    with pytest.raises(ValueError, match="outside 0..30"):
        m(batch_of([[1, 31]]))
    b = batch_of([[1, 2]])
    b["targets"].zero_()
    b["target"].zero_()
    with pytest.raises(ValueError, match="no targets"):
        m.calculate_loss(b)


def test_attention_bias_masks_padding_and_future():
    keep = torch.tensor([[True, False, True, True]])
    allowed = attention_bias(keep, 2, torch.float32)[0, 0] == 0  # queries = the last 2 keys
    assert allowed.tolist() == [[True, False, True, False], [True, False, True, True]]


def planted(n_users: int, seed: int = 0) -> list[list[int]]:
    """Each user walks the item ring with their own stride (1, 2 or 3): the next item needs the last two."""
    rng = random.Random(seed)
    seqs = []
    for _ in range(n_users):
        start, n, stride = rng.randrange(1, N_ITEMS + 1), rng.randrange(6, 12), rng.choice([1, 2, 3])
        seqs.append([(start - 1 + stride * i) % N_ITEMS + 1 for i in range(n)])
    return seqs


@pytest.mark.parametrize("objective, epochs, n_users", [("all", 6, 120), ("last", 10, 300)])
def test_recovers_a_planted_pattern(tmp_path, objective, epochs, n_users):
    seqs = planted(n_users)
    train = make_train_examples([s[:-2] for s in seqs], MAX_LEN)
    valid = make_eval_examples([(s[:-2], s[-2]) for s in seqs], MAX_LEN)
    m = model(objective=objective, role="student")
    tc = TrainConfig(epochs=epochs, batch_size=16, lr=3e-3, patience=0, metric="hr@10", eval_batch_size=256)
    result = fit(m, train, valid, tc, tmp_path, **QUIET)
    assert result.best_metric >= 0.9, result.history[-1]
