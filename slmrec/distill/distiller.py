"""SLMRec: train a small student LLMRec against a frozen teacher LLMRec (DESIGN.md §3).

    total = ce + λ1·cos + λ2·norm + λ3·ms + λ_kl·kl

    ce    student cross-entropy over all items (the student's own objective)
    cos   mean_k direction_loss(t_k, P_k s_k)    t_k: teacher state after layer k·N_t/B
    norm  mean_k norm_loss(t_k, P_k s_k)         s_k: student state after layer k·N_s/B
    ms    mean_{k<B} CE(head_k(s_k))             extra heads on the intermediate student blocks
    kl    logit_kl(student, teacher, T)          optional logit KD (λ_kl = 0 by default)

t_k and s_k are the un-normed residual stream (see LLMRec.encode), taken at the rows the
objective trains on: the final response position for `last`, every real item position for `all`.
P_k is a learned Linear(H_s -> H_t) when the hidden sizes differ, else the identity.

Every term is computed on every step; nothing is wrapped in a fallback. The teacher is frozen
(eval mode, no gradients). Its block features are a function of (teacher, example) only, so
they are computed once per training example (looked up by `batch["idx"]`) and kept in fp16
when they fit `cache_budget_mb`; otherwise the teacher runs under no_grad on every step.
"""

from __future__ import annotations

import hashlib
import json

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slmrec.config import DistillConfig, from_dict, to_dict
from slmrec.distill.losses import block_layers, direction_loss, logit_kl, multi_supervision_loss, norm_loss
from slmrec.models.base import LossOutput, Recommender
from slmrec.models.checkpoint import load_model
from slmrec.models.llmrec import LLMRec

FP16_MAX = torch.finfo(torch.float16).max


def state_hash(model: LLMRec) -> str:
    """sha256 of an LLMRec's config and what it learned (LoRA, input map, score head, item adapter and side)
    + its item table (and text table).

    The frozen base weights are fixed by the config (backbone profile/source). Independent of
    requires_grad, so a teacher hashes the same before and after the distiller freezes it.
    """
    learned = {
        name: tensor
        for name, tensor in model.state_dict().items()
        if ".lora_" in name or name.split(".")[0] in ("input_map", "score_head", "item_table", "item_adapter", "item_side")
    }
    h = hashlib.sha256(json.dumps(model.config_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(learned.items()):
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class TeacherFeatureCache:
    """fp16 teacher block features (+ teacher user vectors) per training example, filled on first use.

    The input ids of every cached example are kept and compared on each lookup: a batch whose
    example `idx` holds different items than when it was cached is an error, not a stale hit.
    """

    def __init__(
        self, key: str, n_examples: int, blocks: int, slots: int, n_positions: int, hidden: int, d_id: int, device
    ):
        self.key = key
        self.feats = torch.zeros(n_examples, blocks, n_positions, hidden, dtype=torch.float16, device=device)
        self.u = torch.zeros(n_examples, n_positions, d_id, dtype=torch.float16, device=device)
        self.inputs = torch.zeros(n_examples, slots, dtype=torch.long, device=device)
        self.filled = torch.zeros(n_examples, dtype=torch.bool, device=device)

    @staticmethod
    def nbytes(n_examples: int, blocks: int, slots: int, n_positions: int, hidden: int, d_id: int) -> int:
        return n_examples * (2 * blocks * n_positions * hidden + 2 * n_positions * d_id + 8 * slots + 1)

    def store(self, idx: Tensor, input_ids: Tensor, feats: Tensor, u: Tensor) -> None:
        for name, x in (("block features", feats), ("user vectors", u)):
            if not bool(x.isfinite().all()) or float(x.abs().max()) > FP16_MAX:
                raise ValueError(
                    f"teacher {name} are not finite or exceed the fp16 range; set distill.cache_teacher=false"
                )
        s = feats.shape[2]  # positions of this batch (trimmed batches: fewer than cached), right-aligned
        self.feats[idx, :, self.feats.shape[2] - s :] = feats.to(torch.float16)
        self.u[idx, self.u.shape[1] - s :] = u.to(torch.float16)
        self.inputs[idx] = self._widen(input_ids)
        self.filled[idx] = True

    def _widen(self, input_ids: Tensor) -> Tensor:
        """(B, S_b) -> (B, L): a trimmed batch's inputs, left-padded to the cached slots."""
        return F.pad(input_ids, (self.inputs.shape[1] - input_ids.shape[1], 0))

    def lookup(self, idx: Tensor, input_ids: Tensor, s: int) -> tuple[Tensor, Tensor]:
        """(B, blocks, s, H) features and (B, s, d_id) user vectors at the last s cached positions (float32)."""
        self.check(idx, input_ids)
        return self.feats[idx, :, self.feats.shape[2] - s :].float(), self.u[idx, self.u.shape[1] - s :].float()

    def check(self, idx: Tensor, input_ids: Tensor) -> None:
        stale = (self.inputs[idx] != self._widen(input_ids)).any(1)  # (B,)
        if bool(stale.any()):
            bad = idx[stale][:5].tolist()
            raise ValueError(
                f"teacher feature cache {self.key}: examples {bad} hold other items than when they were cached "
                "(batch['idx'] must index one fixed training set)"
            )


class DistillationModel(Recommender):
    """Student LLMRec + frozen teacher LLMRec; predictions are the student's."""

    def __init__(
        self,
        student: LLMRec,
        teacher: LLMRec,
        cfg: DistillConfig,
        n_examples: int | None = None,
        data_hash: str = "",
        teacher_checkpoint: str | None = None,
    ):
        super().__init__()
        problems = []
        if student.objective.name != teacher.objective.name:
            problems.append(f"objectives differ (student {student.objective.name}, teacher {teacher.objective.name})")
        if student.n_slots != teacher.n_slots:
            problems.append(f"item slots differ (student max_len {student.n_slots}, teacher {teacher.n_slots})")
        if student.item_table.shape != teacher.item_table.shape or not torch.equal(
            student.item_table.cpu(), teacher.item_table.cpu()
        ):
            problems.append("student and teacher must score against the same frozen item table")
        if cfg.lambda_ms > 0 and cfg.blocks < 2:
            problems.append("lambda_ms > 0 needs blocks >= 2 (multiple supervision uses the blocks before the last)")
        if problems:
            raise ValueError("DistillationModel: " + "; ".join(problems))
        self.cfg = cfg
        self.teacher_layers = block_layers(teacher.n_layers, cfg.blocks)  # e.g. 8 layers, B=4 -> [2, 4, 6, 8]
        self.student_layers = block_layers(student.n_layers, cfg.blocks)  # e.g. 4 layers, B=4 -> [1, 2, 3, 4]
        self.n_items = student.n_items
        self.student = student
        self.teacher = teacher.requires_grad_(False).eval()
        hs, ht = student.hidden, teacher.hidden
        self.heads = nn.ModuleList(nn.Linear(hs, student.d_id, bias=False) for _ in range(cfg.blocks - 1))
        self.projectors = nn.ModuleList(nn.Linear(hs, ht, bias=False) for _ in range(cfg.blocks)) if hs != ht else None
        self.to(next(student.parameters()).device)

        self.teacher_hash = state_hash(teacher)
        self.teacher_checkpoint = teacher_checkpoint
        self.data_hash = data_hash
        self.cache: TeacherFeatureCache | None = None
        self.cache_mode = self._setup_cache(n_examples)

    def _setup_cache(self, n_examples: int | None) -> str:
        positions = self.teacher.objective.n_positions(self.teacher.n_slots)  # S: 1 (last) or L (all)
        shape = (self.cfg.blocks, self.teacher.n_slots, positions, self.teacher.hidden, self.teacher.d_id)
        if not self.cfg.cache_teacher:
            return "no_grad each step (cache_teacher=false)"
        if n_examples is None:
            return "no_grad each step (n_examples not given)"
        need = TeacherFeatureCache.nbytes(n_examples, *shape)
        if need > self.cfg.cache_budget_mb * 2**20:
            return f"no_grad each step ({need / 2**20:.0f} MB > cache_budget_mb={self.cfg.cache_budget_mb})"
        key = f"{self.teacher_hash[:16]}:{self.data_hash[:16]}"
        self.cache = TeacherFeatureCache(key, n_examples, *shape, device=self.student.item_table.device)
        return f"cached fp16 ({need / 2**20:.1f} MB for {n_examples} examples, key {key})"

    def set_progress(self, fraction: float) -> None:
        self.student.set_progress(fraction)  # the teacher never trains

    def train(self, mode: bool = True) -> "DistillationModel":
        super().train(mode)
        self.teacher.eval()  # the teacher never trains: no dropout, deterministic features
        return self

    # -- teacher side

    @torch.no_grad()
    def _run_teacher(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(B, blocks, S, H_t) block features and (B, S, d_id) user vectors at the objective's positions."""
        enc = self.teacher.encode(batch, output_hidden_states=True)
        gather = lambda x: self.teacher.objective.gather(x, enc.n_slots)  # noqa: E731
        feats = torch.stack([gather(enc.layers[i - 1]) for i in self.teacher_layers], dim=1)  # (B, blocks, S, H_t)
        u = self.teacher.user_vectors(gather(enc.final))  # (B, S, d_id)
        return feats.float(), u.float()

    def teacher_features(
        self, batch: dict[str, Tensor], input_ids: Tensor, use_cache: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Teacher features of the batch: from the cache (computing the examples not seen yet) or fresh."""
        if self.cache is None or not use_cache:
            return self._run_teacher(batch)
        idx = batch["idx"]  # (B,)
        if int(idx.min()) < 0 or int(idx.max()) >= self.cache.filled.shape[0]:
            raise ValueError(f"batch idx outside 0..{self.cache.filled.shape[0] - 1} (n_examples of the cache)")
        new = ~self.cache.filled[idx]  # (B,)
        if bool(new.any()):
            sub = {k: v[new] for k, v in batch.items()}
            self.cache.store(idx[new], input_ids[new], *self._run_teacher(sub))
        return self.cache.lookup(idx, input_ids, self.teacher.objective.n_positions(input_ids.shape[1]))

    # -- losses

    def loss_terms(self, batch: dict[str, Tensor], use_cache: bool = True) -> dict[str, Tensor]:
        """Every term as a tensor (ce, cos, norm, ms, kl; align with `llm.item_align`) and their weighted sum (total).

        use_cache=False runs the teacher on the batch (for examples outside the training set).
        """
        student, cfg = self.student, self.cfg
        enc = student.encode(batch, output_hidden_states=True)
        labels = student.objective.labels(enc.input_ids, enc.targets, enc.target)  # (B, S)
        mask = labels > 0  # (B, S) rows that train
        if not bool(mask.any()):
            raise ValueError(f"batch has no targets for objective {student.objective.name!r}")
        y = labels[mask]  # (N,)
        gather = lambda x: student.objective.gather(x, enc.n_slots)  # noqa: E731  (B, S_b+R, .) -> (B, S, .)

        t_feats, t_u = self.teacher_features(batch, enc.input_ids, use_cache)  # (B, blocks, S, H_t), (B, S, d_id)
        t_blocks = [t_feats[:, k][mask] for k in range(cfg.blocks)]  # blocks x (N, H_t)
        s_blocks = [gather(enc.layers[i - 1])[mask].float() for i in self.student_layers]  # blocks x (N, H_s)
        s_in_t = [p(s) for p, s in zip(self.projectors, s_blocks)] if self.projectors is not None else s_blocks

        logits = student.scores(student.user_vectors(gather(enc.final)[mask]))  # (N, n_items + 1)
        terms = {
            "ce": F.cross_entropy(logits, y),
            "cos": torch.stack([direction_loss(t, s) for t, s in zip(t_blocks, s_in_t)]).mean(),
            "norm": torch.stack([norm_loss(t, s) for t, s in zip(t_blocks, s_in_t)]).mean(),
            "ms": (
                multi_supervision_loss([student.scores(h(s)) for h, s in zip(self.heads, s_blocks[:-1])], y)
                if len(self.heads)
                else logits.new_zeros(())  # blocks = 1: no intermediate block (then lambda_ms must be 0)
            ),
            "kl": logit_kl(logits, self.teacher.scores(t_u[mask]), cfg.temperature),  # each over its own item vectors
        }
        terms["total"] = (
            terms["ce"]
            + cfg.lambda_cos * terms["cos"]
            + cfg.lambda_norm * terms["norm"]
            + cfg.lambda_ms * terms["ms"]
            + cfg.lambda_kl * terms["kl"]
        )
        aux = student.item_terms(y)  # the student's own item-side terms (weighted; {} for most sides)
        terms.update(aux)
        if aux:
            terms["total"] = terms["total"] + sum(aux.values())
        return terms

    # -- Recommender API (predictions are the student's)

    def calculate_loss(self, batch: dict[str, Tensor]) -> LossOutput:
        terms = self.loss_terms(batch)
        return LossOutput(terms["total"], {k: float(v.detach()) for k, v in terms.items()})

    def forward(self, batch: dict[str, Tensor], output_hidden_states: bool = False):
        return self.student(batch, output_hidden_states)

    def predict(self, batch: dict[str, Tensor], items: Tensor) -> Tensor:
        return self.student.predict(batch, items)

    def full_sort_predict(self, batch: dict[str, Tensor]) -> Tensor:
        return self.student.full_sort_predict(batch)

    def parameter_counts(self) -> dict[str, int]:
        """The student's counts (what is deployed) plus the distillation-only heads/projectors."""
        extra = sum(p.numel() for m in (self.heads, self.projectors) if m is not None for p in m.parameters())
        return {**self.student.parameter_counts(), "distill_only": extra}

    def config_dict(self) -> dict:
        return {
            "distill": to_dict(self.cfg),
            "student": self.student.config_dict(),
            "teacher": self.teacher.config_dict(),
            "teacher_checkpoint": self.teacher_checkpoint,
            "teacher_hash": self.teacher_hash,
        }

    @classmethod
    def from_config_dict(cls, config: dict) -> "DistillationModel":
        """Reload the teacher from its checkpoint (hash-checked) and rebuild an untrained student."""
        path = config["teacher_checkpoint"]
        if path is None:
            raise ValueError("DistillationModel: config has no teacher_checkpoint; cannot rebuild the teacher")
        teacher = load_model(path)
        if not isinstance(teacher, LLMRec):
            raise ValueError(f"{path}: teacher checkpoint holds a {type(teacher).__name__}, not an LLMRec")
        if state_hash(teacher) != config["teacher_hash"]:
            raise ValueError(f"{path}: teacher changed since distillation (hash mismatch)")
        student = LLMRec.from_config_dict(config["student"])
        student.item_table.copy_(teacher.item_table)  # the same frozen table; the checkpoint's copy loads after
        return cls(student, teacher, from_dict(DistillConfig, config["distill"]), teacher_checkpoint=path)


__all__ = ["DistillationModel", "TeacherFeatureCache", "state_hash"]
