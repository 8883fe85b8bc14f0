"""The item side (issue 19): id | text | id+text (sum, gated, concat, count), for LLMRec, SASRec and distillation.

The planted patterns are ones only the text can reveal: a frozen ID table that tells no item apart, and
items whose IDs never appear in training but whose text equals that of items that do.
"""

import math
import random

import pytest
import torch

from slmrec.config import DistillConfig, SASRecConfig, TrainConfig
from slmrec.data.examples import make_eval_examples, make_train_examples
from slmrec.distill.distiller import DistillationModel
from slmrec.models.item_side import (
    FUSIONS, ITEM_SIDES, TextInputs, build_item_side, prepare_text, unseen_in, unseen_items,
)  # fmt: skip
from slmrec.models.llmrec import LLMRec
from slmrec.models.sasrec import SASRec
from slmrec.train.loop import fit
from test_llmrec import MAX_LEN, N_ITEMS, batch_of, cfg  # tests/models is on sys.path (pytest rootdir)
from test_llmrec import planted as ring

torch.set_num_threads(1)
D_ID, D_TEXT = 16, 24
QUIET = dict(log=lambda s: None)


def text_inputs(n_items=N_ITEMS, d=D_TEXT, seed=0, without=()) -> TextInputs:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n_items + 1, dtype=torch.bool)
    mask[0] = False
    mask[list(without)] = False
    raw = torch.randn(n_items + 1, d, generator=g)
    return TextInputs(prepare_text(raw, mask), mask)


def test_prepare_text_centres_normalises_whitens_and_zeroes_rows_without_text():
    t = text_inputs(without=[5])
    rows = t.table[t.mask]
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(len(rows)))
    assert t.table[0].abs().sum() == 0 and t.table[5].abs().sum() == 0
    g = torch.Generator().manual_seed(1)
    raw = torch.randn(201, 8, generator=g) @ torch.diag(torch.tensor([10.0, 5, 1, 1, 1, 1, 0.5, 0.1]))
    mask = torch.ones(201, dtype=torch.bool)
    w = prepare_text(raw, mask, whiten=True).double()
    cov = torch.cov(w.T)
    # after whitening every direction carries about the same variance (before: 10^4 : 10^-2)
    assert cov.diagonal().max() / cov.diagonal().min() < 2.0
    with pytest.raises(ValueError, match="no item has text"):
        prepare_text(raw, torch.zeros(201, dtype=torch.bool))


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
def test_fusions_start_at_the_id_vectors_and_both_views_get_gradients(fusion):
    ids = torch.randn(N_ITEMS + 1, D_ID)
    side = build_item_side("id+text", D_ID, text_inputs(without=[3]), fusion)
    out = side(ids)
    assert out.shape == (N_ITEMS + 1, D_ID)
    torch.testing.assert_close(out, ids)  # a run starts where `id` would
    before = {n: p.detach().clone() for n, p in side.named_parameters()}
    opt, direction = torch.optim.SGD(side.parameters(), lr=0.1), torch.randn(N_ITEMS + 1, D_ID)
    for _ in range(2):  # concat: the first step opens the projection's text half, the second reaches T
        opt.zero_grad()
        (side(ids) * direction).sum().backward()
        opt.step()
    moved = {n for n, p in side.named_parameters() if not torch.equal(p, before[n])}
    assert "text.map.weight" in moved  # the text view reaches the loss
    assert "text.fallback" in moved  # item 3 has no text: its learned fallback vector trains


def test_sides_registry_and_errors():
    assert sorted(ITEM_SIDES) == ["id", "id+text", "text"]
    with pytest.raises(ValueError, match="reads the item text table"):
        build_item_side("text", D_ID)
    with pytest.raises(ValueError, match="reads no text"):
        build_item_side("id", D_ID, text_inputs())
    with pytest.raises(ValueError, match="unknown fusion 'mean'"):
        build_item_side("id+text", D_ID, text_inputs(), "mean")
    with pytest.raises(ValueError, match="unknown item side 'words'"):
        build_item_side("words", D_ID)


@pytest.mark.parametrize("side, fusion", [("text", "sum"), ("id+text", "gated"), ("id+text", "concat"),
                                         ("id+text", "count")])
def test_llmrec_text_side_round_trip_and_shapes(side, fusion):
    torch.manual_seed(0)
    t = text_inputs()
    t.counts = torch.arange(N_ITEMS + 1) % 7  # the count fusion's per-item buffer must travel with the checkpoint
    m = LLMRec.build(cfg(item_side=side, item_fusion=fusion), "student", torch.randn(N_ITEMS + 1, D_ID),
                     text=t)  # fmt: skip
    with torch.no_grad():
        for p in m.item_side.parameters():
            p.add_(0.1 * torch.randn_like(p))
    b = batch_of([[1, 2, 3], [7, 8], [9]])
    assert m.full_sort_predict(b).shape == (3, N_ITEMS + 1)
    assert any(k.startswith("item_side.text.text") for k in m.trainable_state_dict())  # the table travels along
    rebuilt = LLMRec.from_config_dict(m.config_dict())
    rebuilt.load_trainable_state_dict(m.trainable_state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval().full_sort_predict(b), m.eval().full_sort_predict(b))


def test_llmrec_learns_from_text_what_the_id_table_cannot_tell(tmp_path):
    """The frozen ID table is all zeros: `id` ties every item; the text side learns the planted ring walk."""
    seqs = ring(120)
    train = make_train_examples([s[:-2] for s in seqs], MAX_LEN)
    valid = make_eval_examples([(s[:-2], s[-2]) for s in seqs], MAX_LEN)
    same = torch.zeros(N_ITEMS + 1, D_ID)
    tc = TrainConfig(epochs=10, batch_size=16, lr=1e-2, patience=0, metric="hr@10", eval_batch_size=256)
    best = {}
    for side, fusion in [("id", "sum"), ("text", "sum"), ("id+text", "sum"), ("id+text", "concat")]:
        torch.manual_seed(0)
        text = text_inputs() if side != "id" else None
        m = LLMRec.build(cfg(item_side=side, item_fusion=fusion), "student", same, text=text)
        best[(side, fusion)] = fit(m, train, valid, tc, tmp_path / f"{side}-{fusion}", **QUIET).best_metric
    assert best[("id", "sum")] <= 0.5, best
    for key in [("text", "sum"), ("id+text", "sum"), ("id+text", "concat")]:
        assert best[key] >= 0.9, (key, best)


def cold_pairs(n_groups=10, n_users=160, seed=0):
    """Items 1..G ("A") and G+1..2G ("B"): A_g and B_g have the same text. Training walks A_g -> A_{g+1};
    B items never occur in training. Test: history of A's, target B_{g+1}, interchangeable with A_{g+1}."""
    rng = random.Random(seed)
    train, test = [], []
    for _ in range(n_users):
        start, n = rng.randrange(n_groups), rng.randrange(4, 8)
        walk = [(start + i) % n_groups + 1 for i in range(n)]
        train.append(walk)
        test.append((walk, (start + n) % n_groups + 1 + n_groups))
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(n_groups + 1, D_TEXT, generator=g)
    table = torch.cat([raw, raw[1:]])  # row g and row G + g: one text
    mask = torch.ones(2 * n_groups + 1, dtype=torch.bool)
    mask[0] = False
    return train, test, TextInputs(prepare_text(table, mask), mask)


@torch.no_grad()
def rank_among_b(model, test, n_groups=10):
    """Mean reciprocal rank of the target among the B items (the cold ones)."""
    model.eval()
    batch = {"input_ids": torch.zeros(len(test), MAX_LEN, dtype=torch.long)}
    for r, (hist, _) in enumerate(test):
        h = hist[-MAX_LEN:]
        batch["input_ids"][r, MAX_LEN - len(h) :] = torch.tensor(h)
    scores = model.full_sort_predict(batch)[:, n_groups + 1 :]  # (U, G): B items only
    target = torch.tensor([t - n_groups - 1 for _, t in test])
    rank = (scores > scores[torch.arange(len(test)), target][:, None]).sum(1) + 1
    return float((1.0 / rank).mean())


@pytest.mark.parametrize("side", ["id+text", "text"])
def test_sasrec_text_side_ranks_items_never_seen_in_training(tmp_path, side):
    train_seqs, test, text = cold_pairs()
    n_items = 20
    train = make_train_examples(train_seqs, MAX_LEN)
    valid = make_eval_examples([(s[:-1], s[-1]) for s in train_seqs], MAX_LEN)
    tc = TrainConfig(epochs=15, batch_size=32, lr=1e-2, patience=0, metric="mrr", eval_batch_size=256)
    mrr = {}
    for name, t in [("id", None), (side, text)]:
        torch.manual_seed(0)
        m = SASRec(n_items, SASRecConfig(hidden=32, max_len=MAX_LEN, dropout=0.0, item_side=name), text=t)
        fit(m, train, valid, tc, tmp_path / name, **QUIET)
        mrr[name] = rank_among_b(m, test)
    assert mrr["id"] <= 0.45, mrr  # chance among 10 is ~0.29: an ID model cannot rank an item it never saw
    # the cold B item ranks first among the B items through its text (measured 1.0 for both). With id+text
    # the cold item's own ID vector is never a target, only pushed down as a negative: trained 30 epochs
    # instead of 15 it fell to 0.93, with hidden 16 to 0.45 (the ID view of a cold item is noise)
    assert mrr[side] >= (0.9 if side == "text" else 0.8), mrr
    rebuilt = SASRec.from_config_dict(m.config_dict())
    rebuilt.load_trainable_state_dict(m.trainable_state_dict())
    assert rank_among_b(rebuilt, test) == mrr[side]


def test_distillation_with_a_text_side_uses_each_models_item_vectors():
    torch.manual_seed(0)
    table = torch.randn(N_ITEMS + 1, D_ID)
    teacher = LLMRec.build(cfg(item_side="id+text", item_fusion="gated"), "teacher", table, text=text_inputs())
    student = LLMRec.build(cfg(item_side="id+text", item_fusion="gated"), "student", table, text=text_inputs())
    with torch.no_grad():
        for p in teacher.item_side.parameters():
            p.add_(0.1 * torch.randn_like(p))
    d = DistillationModel(student, teacher, DistillConfig(blocks=2, lambda_kl=1.0), n_examples=3)
    out = d.calculate_loss(batch_of([[1, 2, 3], [7, 8], [9]]))
    out.loss.backward()
    assert out.terms["kl"] > 0
    assert student.item_side.text.map.weight.grad is not None  # the KL and CE reach the student's text view
    assert all(p.grad is None for p in teacher.parameters())


def test_unseen_items_are_read_through_their_text_alone():
    """An item in no training sequence: id+text ignores its (untrained) ID vector; the flags travel along."""
    unseen = unseen_in([[1, 2, 3], [2, 4]], 5)
    assert unseen.tolist() == [False, False, False, False, False, True]
    t = text_inputs(n_items=5)
    side = build_item_side("id+text", D_ID, TextInputs(t.table, t.mask, unseen), "sum")
    with torch.no_grad():
        side.text.map.weight.normal_()
    ids = torch.randn(6, D_ID)
    out = side(ids)
    torch.testing.assert_close(out[5], side.text()[5])  # text only
    torch.testing.assert_close(out[:5], ids[:5] + side.text()[:5])
    assert unseen_items(side) == 1
    assert unseen_items(build_item_side("id+text", D_ID, t, "sum")) == 0  # none unseen: no flags stored

    torch.manual_seed(0)
    m = SASRec(5, SASRecConfig(hidden=D_ID, max_len=MAX_LEN, item_side="id+text"), text=TextInputs(t.table, t.mask, unseen))
    rebuilt = SASRec.from_config_dict(m.config_dict())
    rebuilt.load_trainable_state_dict(m.trainable_state_dict())
    assert m.config_dict()["unseen_items"] == 1 and torch.equal(rebuilt.item_side.id_unseen, unseen)


def test_items_in_no_training_sequence_are_no_training_negatives():
    """Text sides leave unseen items out of the training softmax (evaluation still scores them)."""
    t = text_inputs(n_items=5)
    unseen = unseen_in([[1, 2, 3], [2, 4]], 5)
    torch.manual_seed(0)
    m = SASRec(5, SASRecConfig(hidden=D_ID, max_len=MAX_LEN, dropout=0.0, item_side="text"),
               text=TextInputs(t.table, t.mask, unseen))  # fmt: skip
    b = {"input_ids": torch.tensor([[0, 1, 2]]), "targets": torch.tensor([[0, 2, 3]])}
    loss = m.calculate_loss(b).loss
    states = m(b)[0, 1:]  # (2, H)
    logits = states @ m.items().T
    logits[:, 0] = logits[:, 5] = float("-inf")
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, torch.tensor([2, 3])))
    assert torch.isfinite(m.full_sort_predict(b)[:, 5]).all()  # scored at evaluation
    llm = LLMRec.build(cfg(item_side="text"), "student", torch.randn(6, D_ID), text=TextInputs(t.table, t.mask, unseen))
    llm.calculate_loss(batch_of([[1, 2, 3]]))  # a planted target 4: fine; unseen item 5 is masked, not a target


def test_id_dropout_reads_a_share_of_items_by_their_text_in_training_only():
    """item_id_dropout: in training each step zeroes the ID vector of ~p of the items (their fused vector is
    the text view alone, not rescaled); evaluation reads every ID vector; other sides refuse it."""
    t = text_inputs(n_items=400)
    side = build_item_side("id+text", D_ID, t, "sum", id_dropout=0.3)
    with torch.no_grad():
        side.text.map.weight.normal_()
    ids, text = torch.randn(401, D_ID), side.text().detach()
    torch.manual_seed(0)
    out = side.train()(ids)
    text_only = torch.isclose(out, text).all(1)  # (401,)
    torch.testing.assert_close(out[~text_only], ids[~text_only] + text[~text_only])
    assert 0.2 < text_only.float().mean() < 0.4  # ~30% of 401 rows
    assert not torch.equal(side(ids), out)  # a fresh draw each step
    torch.testing.assert_close(side.eval()(ids), ids + text)
    m = LLMRec.build(cfg(item_side="id+text", item_id_dropout=0.5), "student", torch.randn(N_ITEMS + 1, D_ID),
                     text=text_inputs())  # fmt: skip
    assert m.item_side.id_dropout == 0.5
    sasrec = SASRec(N_ITEMS, SASRecConfig(hidden=D_ID, max_len=MAX_LEN, item_side="id+text", item_id_dropout=0.5),
                    text=text_inputs())  # the same option for SASRec (the control of the LLM lever)
    assert sasrec.item_side.id_dropout == 0.5
    with pytest.raises(ValueError, match="has none to drop"):
        build_item_side("text", D_ID, t, id_dropout=0.3)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        build_item_side("id+text", D_ID, t, id_dropout=1.0)


def test_count_fusion_gates_the_text_by_how_often_an_item_was_seen():
    """c = standardised log(1 + count); out = e + sigmoid(c w + b) * T(text), checked by hand on one item; then a
    planted pattern: text helps the rare items (their target is e + T0 t) and must stay out of the popular ones
    (target e). Trained on that, the gate opens for rare items and closes for popular ones."""
    n = 200
    t = text_inputs(n_items=n)
    counts = torch.cat([torch.zeros(1, dtype=torch.long), torch.where(torch.arange(n) < n // 2, 1, 50)])
    t.counts = counts
    side = build_item_side("id+text", D_ID, t, "count")
    logs = torch.log1p(counts[1:].double())
    c5 = (math.log(2.0) - logs.mean()) / logs.std(unbiased=False)  # item 5 was seen once
    torch.testing.assert_close(side.fusion.count_feature[5], c5.float())
    with torch.no_grad():
        side.text.map.weight.normal_()
        side.fusion.w.fill_(2.0)
        side.fusion.b.fill_(-0.5)
    ids = torch.randn(n + 1, D_ID)
    g5 = torch.sigmoid(c5.float() * 2.0 - 0.5)
    torch.testing.assert_close(side(ids)[5], ids[5] + g5 * side.text()[5])

    torch.manual_seed(0)
    side = build_item_side("id+text", D_ID, t, "count")
    truth = torch.randn(t.table.shape[1], D_ID) * 0.5
    rare = counts == 1  # (n + 1,)
    target = ids + rare[:, None] * (t.table @ truth)  # (n + 1, D_ID)
    opt = torch.optim.Adam(side.parameters(), lr=0.05)
    losses = []
    for _ in range(300):
        opt.zero_grad()
        loss = ((side(ids) - target)[1:] ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])
    gate = side.fusion.gate().detach().mean(1)  # (n + 1,)
    # the gate's level for rare items trades off against T's scale (measured 0.77); the popular ones' closes (0.017)
    assert gate[rare].mean() > 0.5 and gate[~rare][1:].mean() < 0.1, (gate[rare].mean(), gate[~rare][1:].mean())


def test_count_fusion_grows_for_items_added_after_training():
    """An item added to the catalogue was never seen: its count feature is that of count 0."""
    t = text_inputs(n_items=20)
    t.counts = torch.arange(21) % 5
    m = SASRec(20, SASRecConfig(hidden=D_ID, max_len=MAX_LEN, item_side="id+text", item_fusion="count"), text=t)
    before = m.item_side.fusion.count_feature.clone()
    m.add_items(torch.nn.functional.normalize(torch.randn(2, D_TEXT), dim=1))
    feature = m.item_side.fusion.count_feature
    assert feature.shape == (23,) and torch.equal(feature[:21], before)
    logs = torch.log1p(t.counts[1:].double())
    torch.testing.assert_close(feature[21:], ((0 - logs.mean()) / logs.std(unbiased=False)).float().expand(2))
    assert m.full_sort_predict({"input_ids": torch.tensor([[0] * (MAX_LEN - 2) + [1, 2]])}).shape == (1, 23)


def test_infonce_alignment_matches_a_hand_computed_value():
    """Three target items with text (the padding row, a repeat and an item without text left out): the
    symmetric InfoNCE of the text view against the frozen e, written out by hand; the side feeds it T(t)."""
    t = text_inputs(n_items=4, without=[4])
    side = build_item_side("id+text", 2, t, "sum", align="infonce", align_weight=0.5)
    e = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, 5.0]])  # (5, 2)
    tv = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, -1.0], [9.0, 9.0]])
    targets = torch.tensor([3, 1, 0, 2, 1, 4])
    got = side.align(e, tv, t.mask, targets)["align"]
    with torch.no_grad():
        side.text.map.weight.normal_()
    torch.testing.assert_close(side.auxiliary(e, targets)["align"], side.align(e, side.text(), t.mask, targets)["align"])
    # dot products s[i][j] = tv_i . e_j for items 1..3:
    s = [[2.0, 0.0, 2.0], [0.0, 1.0, 1.0], [1.0, -1.0, 0.0]]
    rows = sum(math.log(sum(math.exp(x) for x in s[i])) - s[i][i] for i in range(3)) / 3
    cols = sum(math.log(sum(math.exp(s[j][i]) for j in range(3))) - s[i][i] for i in range(3)) / 3
    assert got.item() == pytest.approx(0.5 * 0.5 * (rows + cols), abs=1e-5)
    assert side.auxiliary(e, torch.tensor([2, 2, 0]))["align"].item() == 0.0  # one candidate: log 1
    assert build_item_side("id+text", 2, t, "sum").auxiliary(e, torch.tensor([1, 2])) == {}
    with pytest.raises(ValueError, match="unknown alignment 'cka'"):
        build_item_side("id+text", 2, t, "sum", align="cka", align_weight=0.1)
    with pytest.raises(ValueError, match="has one"):
        build_item_side("text", 2, t, align="infonce", align_weight=0.1)
    with pytest.raises(ValueError, match="must be > 0"):
        build_item_side("id+text", 2, t, "sum", align="infonce", align_weight=0.0)


def test_infonce_alignment_teaches_the_text_map_what_the_id_vectors_say():
    """Planted: the frozen ID vectors are a hidden linear function of the text (e = t M). Trained on the
    alignment alone from T = 0 (sum fusion), the text view picks out each item's own ID vector: top-1 over 200
    items rises from chance (0.005) to nearly all."""
    n = 200
    t = text_inputs(n_items=n)
    e = t.table @ (torch.randn(D_TEXT, D_ID, generator=torch.Generator().manual_seed(3)) * 2.0)  # (n + 1, D_ID)
    torch.manual_seed(0)
    side = build_item_side("id+text", D_ID, t, "sum", align="infonce", align_weight=1.0)
    opt = torch.optim.Adam(side.parameters(), lr=0.05)

    def top1() -> float:
        with torch.no_grad():
            return float(((side.text()[1:] @ e[1:].T).argmax(1) == torch.arange(n)).float().mean())

    before, losses = top1(), []
    for step in range(150):
        targets = torch.randint(1, n + 1, (64,), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss = side.auxiliary(e, targets)["align"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert before < 0.05 and top1() > 0.9, (before, top1())
    assert sum(losses[-10:]) < 0.2 * sum(losses[:10]), (losses[:3], losses[-3:])


def test_the_alignment_is_part_of_the_llm_and_the_distilled_students_loss():
    torch.manual_seed(0)
    table = torch.randn(N_ITEMS + 1, D_ID)
    c = cfg(item_side="id+text", item_align="infonce", item_align_weight=0.3)
    m = LLMRec.build(c, "student", table, text=text_inputs())
    with torch.no_grad():
        m.item_side.text.map.weight.normal_()
    b = batch_of([[1, 2, 3], [7, 8], [9, 4]])
    out = m.calculate_loss(b)
    assert out.terms["align"] > 0
    assert out.loss.item() == pytest.approx(out.terms["ce"] + out.terms["align"], rel=1e-5)
    out.loss.backward()
    assert m.item_side.text.map.weight.grad is not None
    rebuilt = LLMRec.from_config_dict(m.config_dict())  # the option travels with the checkpoint's config
    assert rebuilt.item_side.align.weight == 0.3
    teacher = LLMRec.build(cfg(item_side="id+text"), "teacher", table, text=text_inputs())
    d = DistillationModel(m, teacher, DistillConfig(blocks=2), n_examples=3)
    terms = d.loss_terms(b)
    expected = terms["ce"] + terms["cos"] + 0.1 * terms["norm"] + terms["ms"] + terms["align"]
    torch.testing.assert_close(terms["total"], expected)
    assert "align" not in LLMRec.build(cfg(item_side="id+text"), "student", table,
                                       text=text_inputs()).calculate_loss(b).terms  # fmt: skip


def test_text_warmup_reads_every_item_by_its_text_first_then_the_id_dropout_applies(tmp_path):
    """llm.text_warmup 0.5: fit tells the model its progress before every step (step / total steps); while it is
    below 0.5 a training step zeroes every ID vector, then only item_id_dropout's share; evaluation reads all."""
    t = text_inputs(n_items=400)
    side = build_item_side("id+text", D_ID, t, "sum", id_dropout=0.2, text_warmup=0.5)
    with torch.no_grad():
        side.text.map.weight.normal_()
    ids, text = torch.randn(401, D_ID), side.text().detach()
    side.train().set_progress(0.25)
    torch.testing.assert_close(side(ids), text)  # text alone
    side.set_progress(0.5)
    dropped = torch.isclose(side(ids), text).all(1).float().mean()
    assert 0.1 < dropped < 0.3  # item_id_dropout 0.2 from here on
    side.eval().set_progress(0.0)
    torch.testing.assert_close(side(ids), ids + text)
    with pytest.raises(ValueError, match="one view"):
        build_item_side("text", D_ID, t, text_warmup=0.3)
    with pytest.raises(ValueError, match=r"text_warmup must be in \[0, 1\)"):
        build_item_side("id+text", D_ID, t, text_warmup=1.0)

    seqs = ring(40)
    train = make_train_examples([s[:-2] for s in seqs], MAX_LEN)
    valid = make_eval_examples([(s[:-2], s[-2]) for s in seqs], MAX_LEN)
    torch.manual_seed(0)
    table = torch.randn(N_ITEMS + 1, D_ID)
    m = LLMRec.build(cfg(item_side="id+text", text_warmup=0.5), "student", table, text=text_inputs())
    seen, inner = [], m.item_side.set_progress
    m.item_side.set_progress = lambda f: (seen.append(f), inner(f))
    tc = TrainConfig(epochs=2, batch_size=16, lr=1e-2, patience=0, eval_batch_size=256)
    fit(m, train, valid, tc, tmp_path / "warm", **QUIET)
    steps = 2 * math.ceil(len(train) / 16)  # 2 epochs of batches of 16 examples
    assert seen == [i / steps for i in range(steps)]
    teacher = LLMRec.build(cfg(item_side="id+text"), "teacher", table, text=text_inputs())
    d = DistillationModel(m, teacher, DistillConfig(blocks=2), n_examples=3)
    d.set_progress(0.75)
    assert seen[-1] == 0.75 and m.item_side.id_drop_share() == 0.0  # the distiller passes it to the student
