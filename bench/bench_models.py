"""Model benchmark: SASRec / teacher / student_nokd / student / E4SRec-full, one run, same data, same machine.

    .venv/bin/python bench/bench_models.py --profile smol --steps 1 --rounds 5 --infer-users 64

Rows
    sasrec             the baseline (its own batch size and max_len from params.yaml)
    teacher            LLMRec, llm.teacher_layers of the backbone
    student_nokd       LLMRec, llm.student_layers (no distillation)
    student            the distilled student: training = DistillationModel (student + frozen teacher) with the
                       teacher's block features cached (what every epoch after the first costs);
                       inference = the student alone (what is deployed)
    student (KD, teacher fwd)
                       training only: the same with the teacher run under no_grad on every step (the first
                       epoch, which fills the cache, or cache_teacher=false)
    e4srec_full        LLMRec over *all* the backbone's layers (30 for SmolLM2-135M) with untrained LoRA: the
                       full-depth model the student replaces; its weights don't change its cost

How it measures
    * Every (model, phase) runs in its own worker process (this file with --worker), built once and kept
      warm; phases are `train` (optimizer steps: forward, backward, clipping, AdamW, as fit() does, no
      scheduler) and `infer` (slmrec.eval.evaluator.evaluate on the test split: full ranking, timed around
      full_sort_predict; LLMRec after merge_for_inference()). Memory = the worker's peak RSS (VmHWM of
      /proc/self/status on Linux, see peak_rss_mb), which includes the Python/torch/transformers import.
    * Every LLM trains on the same `--steps` batches (the first batches of the seeded epoch-0 order, batch
      size --batch-size); SASRec on its own examples and batch size. Seconds per epoch are extrapolated:
      median seconds per step x steps per epoch. One untimed warm-up step first (the KD worker also fills
      its teacher cache for those batches).
    * `--rounds` rounds visit the workers in turn (alternating direction), so load from other jobs on a
      shared machine hits every model alike; tables show the median over rounds, ratios the median of the
      ratios within each round (paired: both times saw the same minutes), per-round values at the end.
    * Test metrics are not measured here: they come from a trained run, by default results/metrics.json
      after `dvc repro` (shown only where models/<name>/model.pt has the configuration benchmarked), or
      with --train from a quick chain on --max-users users in a temp folder (whose splits are then timed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from slmrec.config import EvalConfig, Params, from_dict, load_params, to_dict
from slmrec.data.sequences import load_splits
from slmrec.stages.data import sequences_stage
from slmrec.distill.distiller import DistillationModel
from slmrec.eval.evaluator import evaluate
from slmrec.stages.experiment import PROFILE_DEFAULTS, sample_users
from slmrec.lineage import atomic_write_text
from slmrec.models.backbones import load_backbone, resolve_device
from slmrec.models.llmrec import LLMRec
from slmrec.models.sasrec import SASRec
from slmrec.stages.models import evaluate_models, item_table, train_llm, train_sasrec
from slmrec.data.examples import epoch_order, iter_batch_rows, make_eval_examples, make_train_examples, to_device

REPO = Path(__file__).resolve().parents[1]
MARK = "@@bench "  # prefix of the worker's protocol lines on stdout (anything else printed there is ignored)

# name -> (label in the tables, phases measured)
ROWS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sasrec": ("SASRec", ("train", "infer")),
    "teacher": ("teacher", ("train", "infer")),
    "student_nokd": ("student_nokd", ("train", "infer")),
    "student": ("student (KD, cached teacher)", ("train", "infer")),
    "student_kd_fwd": ("student (KD, teacher fwd)", ("train",)),
    "e4srec_full": ("E4SRec full", ("train", "infer")),
}
TRAINED = ("sasrec", "teacher", "student_nokd", "student")  # rows with a trained model and test metrics


# ---------------------------------------------------------------- worker side (one model, one phase)


def peak_rss_mb() -> float:
    """Peak resident set size of this process, MB.

    Linux: VmHWM of /proc/self/status, the high-water mark of this program's own memory map. Not
    getrusage's ru_maxrss there: it survives fork + exec, so a worker would start at its parent's peak.
    Elsewhere: ru_maxrss (bytes on macOS, KiB otherwise).
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def emit(obj: dict) -> None:
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


@dataclass
class Context:
    """What every builder needs: the configuration, the data and the frozen item table."""

    params: Params
    n_items: int
    table: torch.Tensor  # (n_items + 1, d_id)
    full_layers: int
    n_train: int  # LLM training examples (the teacher-feature cache is sized by it)


def _llm(layers_of):
    def build(ctx: Context, phase: str):
        return LLMRec(ctx.params.llm, layers_of(ctx), ctx.table)

    return build


def _sasrec(ctx: Context, phase: str):
    return SASRec(ctx.n_items, ctx.params.sasrec)


def _distilled(cache_teacher: bool):
    def build(ctx: Context, phase: str):
        llm = ctx.params.llm
        student = LLMRec(llm, llm.student_layers, ctx.table)
        if phase == "infer":  # deployed: the student alone
            return student
        teacher = LLMRec(llm, llm.teacher_layers, ctx.table)  # untrained: its cost doesn't depend on its weights
        cfg = dataclasses.replace(ctx.params.distill, cache_teacher=cache_teacher)
        return DistillationModel(student, teacher, cfg, n_examples=ctx.n_train, data_hash="bench")

    return build


BUILDERS = {
    "sasrec": _sasrec,
    "teacher": _llm(lambda c: c.params.llm.teacher_layers),
    "student_nokd": _llm(lambda c: c.params.llm.student_layers),
    "student": _distilled(cache_teacher=True),
    "student_kd_fwd": _distilled(cache_teacher=False),
    "e4srec_full": _llm(lambda c: c.full_layers),
}


def describe(model) -> dict:
    """Parameter counts and the deployable model's config (what models/<name>/model.pt would hold)."""
    deployed = model.student if isinstance(model, DistillationModel) else model
    if isinstance(model, (LLMRec, DistillationModel)):  # the distiller: the student's counts + distill_only
        counts = model.parameter_counts()
    else:
        counts = {"total": model.num_parameters(), "trainable": model.num_parameters(trainable_only=True)}
    if isinstance(deployed, LLMRec):
        counts["decoder_layers"] = sum(p.numel() for p in deployed.base.layers.parameters())
        counts["n_layers"] = deployed.n_layers
    return {"params": counts, "config": deployed.config_dict()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainPhase:
    """Timed optimizer steps on fixed batches."""

    def __init__(self, model, batches: list[dict], device: torch.device, grad_clip: float, lr: float):
        self.model, self.batches, self.device, self.grad_clip = model, batches, device, grad_clip
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr)
        model.train()

    def step(self, batch) -> None:
        out = self.model.calculate_loss(batch)
        out.loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def warm_up(self) -> None:
        if isinstance(self.model, DistillationModel) and self.model.cache is not None:
            with torch.no_grad():  # fill the teacher-feature cache for the timed batches
                for batch in self.batches:
                    self.model.calculate_loss(batch)
        self.step(self.batches[0])

    def round(self) -> dict:
        seconds = []
        for batch in self.batches:
            _sync(self.device)
            t0 = time.perf_counter()
            self.step(batch)
            _sync(self.device)
            seconds.append(time.perf_counter() - t0)
        return {"s_per_step": sum(seconds) / len(seconds), "steps": len(seconds)}


class InferPhase:
    """Full-ranking evaluation of the test examples (timed by the evaluator around full_sort_predict)."""

    def __init__(self, model, examples, eval_cfg: EvalConfig, batch_size: int, device: torch.device):
        if isinstance(model, LLMRec):
            model.merge_for_inference()  # LoRA folded in, constant instruction prefix cached
        self.model, self.examples, self.cfg = model, examples, eval_cfg
        self.batch_size, self.device = batch_size, device

    def warm_up(self) -> None:
        rows = torch.arange(min(self.batch_size, len(self.examples)))
        first = dataclasses.replace(self.examples, input_ids=self.examples.input_ids[rows],
                                    targets=self.examples.targets[rows], user=self.examples.user[rows])
        evaluate(self.model, first, self.cfg, batch_size=self.batch_size, device=self.device)

    def round(self) -> dict:
        res = evaluate(self.model, self.examples, self.cfg, batch_size=self.batch_size, device=self.device)
        return {"users_per_s": res.users_per_s, "ms_per_batch": res.latency_ms, "users": res.n_users}


def load_table(sasrec_dir: str | None, n_items: int, params: Params, seed: int) -> torch.Tensor:
    """SASRec's item table from a trained model dir, else a seeded untrained SASRec's (same shape and scale)."""
    if sasrec_dir:
        table = item_table(sasrec_dir)
        if table.shape[0] != n_items + 1:
            raise ValueError(f"{sasrec_dir}: item table has {table.shape[0] - 1} items, the splits {n_items}")
        return table.clone()
    torch.manual_seed(seed)
    return SASRec(n_items, params.sasrec).item_embeddings().clone()


def worker(spec: dict) -> None:
    """Build one model for one phase, then answer `run` (one timed round) and `quit` (peak memory) on stdin."""
    torch.set_num_threads(spec["threads"])
    rss_import = peak_rss_mb()
    params = from_dict(Params, spec["params"])
    device = resolve_device(params.llm.device)
    splits = load_splits(spec["splits"])
    llm_train = make_train_examples(splits.train, params.llm.max_len)
    table = load_table(spec["sasrec_dir"], splits.n_items, params, spec["seed"])
    ctx = Context(params, splits.n_items, table, spec["full_layers"], len(llm_train))

    t0 = time.perf_counter()
    torch.manual_seed(spec["seed"])
    model = BUILDERS[spec["name"]](ctx, spec["phase"]).to(device)
    build_s = time.perf_counter() - t0
    info = describe(model)
    is_sasrec = spec["name"] == "sasrec"
    max_len = params.sasrec.max_len if is_sasrec else params.llm.max_len

    if spec["phase"] == "train":
        train = make_train_examples(splits.train, params.sasrec.max_len) if is_sasrec else llm_train
        batch_size = params.train_sasrec.batch_size if is_sasrec else spec["batch_size"]
        tcfg = params.train_sasrec if is_sasrec else params.train_llm
        rows = list(iter_batch_rows(epoch_order(len(train), tcfg.seed, 0), batch_size))
        # the epoch's first batches (cycled when an epoch has fewer than --steps)
        batches = [to_device(train.batch(rows[i % len(rows)]), device) for i in range(spec["steps"])]
        phase = TrainPhase(model, batches, device, tcfg.grad_clip, tcfg.lr)
        info.update(steps_per_epoch=len(rows), batch_size=batch_size, n_train=len(train))
    else:
        test = splits.test[: spec["infer_users"]] if spec["infer_users"] else splits.test
        eval_cfg = dataclasses.replace(from_dict(EvalConfig, spec["params"]["eval"]), sampled_negatives=0)
        phase = InferPhase(model, make_eval_examples(test, max_len), eval_cfg, spec["eval_batch_size"], device)
        info.update(batch_size=spec["eval_batch_size"], users=len(test))
    t0 = time.perf_counter()
    phase.warm_up()
    info.update(build_s=build_s, warm_up_s=time.perf_counter() - t0, max_len=max_len, device=str(device),
                rss_import_mb=rss_import, rss_ready_mb=peak_rss_mb())
    emit(info)
    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            emit(phase.round())
        elif command == "quit":
            final = {"peak_rss_mb": peak_rss_mb()}
            if device.type == "cuda":
                final["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            emit(final)
            return
        else:
            raise ValueError(f"worker: unknown command {command!r} (expected run or quit)")


# ---------------------------------------------------------------- parent side


class Worker:
    """A warm worker process for one (model, phase); talks line by line over its stdin/stdout."""

    def __init__(self, name: str, phase: str, spec: dict):
        self.name, self.phase = name, phase
        job = json.dumps({**spec, "name": name, "phase": phase})
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", job]
        env = {**os.environ, "SLMREC_NO_TQDM": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
        self.info = self._read()

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
        code = self.proc.wait()
        raise RuntimeError(f"worker {self.name}/{self.phase} exited with code {code} (its stderr is above)")

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> dict:
        final = self.ask("quit")
        self.proc.wait(timeout=60)
        return final


def bench_params(args: argparse.Namespace):
    """params.yaml with the benchmarked profile (a profile other than the file's gets its layer preset)."""
    params = load_params(args.params)
    llm, distill = dataclasses.replace(params.llm, profile=args.profile), params.distill
    if args.profile != params.llm.profile:
        llm = dataclasses.replace(llm, **PROFILE_DEFAULTS[args.profile]["llm"])
        distill = dataclasses.replace(distill, **PROFILE_DEFAULTS[args.profile]["distill"])
    if args.epochs is not None:
        params = dataclasses.replace(
            params,
            train_sasrec=dataclasses.replace(params.train_sasrec, epochs=args.epochs),
            train_llm=dataclasses.replace(params.train_llm, epochs=args.epochs),
        )
    return dataclasses.replace(params, llm=llm, distill=distill)


def train_chain(args: argparse.Namespace, params, work: Path) -> tuple[str, str, str]:
    """--train: user sample -> splits -> the four models -> test metrics, all in `work`."""
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    interactions = Path(args.interactions)
    if args.max_users:
        interactions = sample_users(interactions, work / "interactions_sample", args.max_users)
    splits = str(work / "splits")
    stats = sequences_stage(str(interactions), dataclasses.replace(params.sequences, out_dir=splits))
    log(f"train mode: {stats['n_users']} users, {stats['n_items']} items, {stats['n_interactions']} interactions")
    models, runs = work / "models", str(work / "runs")
    dirs = {name: str(models / name) for name in TRAINED}
    train_sasrec(splits, params, dirs["sasrec"], runs, log=log)
    train_llm("teacher", splits, params, dirs["teacher"], dirs["sasrec"], None, runs, log=log)
    train_llm("student", splits, params, dirs["student_nokd"], dirs["sasrec"], None, runs, log=log)
    train_llm("student", splits, params, dirs["student"], dirs["sasrec"], dirs["teacher"], runs, log=log)
    metrics = str(work / "metrics.json")
    evaluate_models(splits, params, dirs, metrics, log=log)
    return splits, str(models), metrics


def _normalised(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def trained_results(models_dir: Path, metrics_path: Path, configs: dict[str, dict], dataset_hash: str) -> dict:
    """Per trained row: test metrics + the pipeline's own training timings, if its checkpoint matches `configs`
    and the metrics were computed on the benchmarked splits (`dataset_hash`)."""
    summary = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {"models": {}}
    if summary["models"] and summary.get("dataset_hash") != dataset_hash:
        return {name: {"note": f"{metrics_path} was computed on other splits (dataset hash)"} for name in TRAINED}
    metrics = summary["models"]
    out = {}
    for name in TRAINED:
        ckpt, train_json = models_dir / name / "model.pt", models_dir / name / "train.json"
        if not ckpt.is_file():
            out[name] = {"note": f"no {ckpt}"}
            continue
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)["model_config"]
        if _normalised(saved) != _normalised(configs[name]):
            out[name] = {"note": f"{ckpt} has another configuration than the one benchmarked"}
            continue
        row = {"note": ""}
        if name in metrics:
            row.update({k: metrics[name][k] for k in ("ndcg@10", "hr@10", "mrr")})
        else:
            row["note"] = f"no {name} in {metrics_path}" if metrics_path.is_file() else f"no {metrics_path}"
        if train_json.is_file():
            info = json.loads(train_json.read_text())
            row.update(pipeline_s_per_epoch=info["seconds_per_epoch"], pipeline_epochs=len(info["history"]))
        out[name] = row
    return out


def _fmt(x, digits: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:,.{digits}f}"


def _ratio(a, b) -> str:
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}×"


def report(args, params, spec, info, rounds, finals, trained, loads, wall_s) -> str:
    """The markdown: setup, main table, ratios, per-round values."""
    med = {  # (name, phase) -> {metric: median over rounds}
        key: {m: statistics.median(r[m] for r in rs) for m in rs[0] if m not in ("steps", "users")}
        for key, rs in rounds.items()
    }
    get = lambda name, phase, m: med.get((name, phase), {}).get(m)  # noqa: E731

    def best(name: str, phase: str) -> float | None:
        """The least disturbed round: fewest s/step (train), most users/s (infer)."""
        if (name, phase) not in rounds:
            return None
        if phase == "train":
            return min(r["s_per_step"] for r in rounds[(name, phase)])
        return max(r["users_per_s"] for r in rounds[(name, phase)])

    llm = params.llm
    first_train = info[("teacher", "train")]
    lines = [
        f"Command: `{' '.join(['.venv/bin/python', 'bench/bench_models.py', *args.argv])}`",
        "",
        f"Data: `{spec['splits']}` ({info[('teacher', 'infer')]['users']} test users timed); profile `{llm.profile}`, "
        f"objective `{llm.objective}`, LLM max_len {llm.max_len}, SASRec max_len {params.sasrec.max_len}; "
        f"device {info[('teacher', 'train')]['device']}, torch threads {spec['threads']}; item table "
        f"{'from ' + spec['sasrec_dir'] if spec['sasrec_dir'] else 'of an untrained seeded SASRec'}.",
        f"Training: {args.steps} optimizer steps per round on the same batches for every LLM (batch "
        f"{first_train['batch_size']}, {first_train['steps_per_epoch']} steps per epoch of {first_train['n_train']} "
        f"examples); SASRec batch {info[('sasrec', 'train')]['batch_size']} "
        f"({info[('sasrec', 'train')]['steps_per_epoch']} steps per epoch). s/epoch = median s/step × steps per epoch "
        "(extrapolated, not a measured epoch). Inference: full ranking, eval batch "
        f"{spec['eval_batch_size']}, LLMs after merge_for_inference().",
        f"Median of {args.rounds} interleaved rounds; {wall_s / 60:.1f} min in all. Load average (1/5/15 min) at "
        f"start {'/'.join(f'{x:.2f}' for x in loads[0])}, end {'/'.join(f'{x:.2f}' for x in loads[-1])} "
        f"({os.cpu_count()} CPUs; other jobs share them).",
        "",
        "| model | layers | params total | trainable | peak RSS train MB | peak RSS infer MB | NDCG@10 | HR@10 | MRR |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    speed = [
        "| model | train s/step | best round | train s/epoch | users/s | best round | ms/batch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (label, phases) in ROWS.items():
        counts = info[(name, phases[0])]["params"]
        s_step = get(name, "train", "s_per_step")
        steps_per_epoch = info[(name, "train")]["steps_per_epoch"]
        t = trained.get(name, {})
        label += " ¹" if name in ("student", "student_kd_fwd") else (" ²" if name == "e4srec_full" else "")
        cells = [
            label,
            _fmt(counts.get("n_layers", params.sasrec.layers if name == "sasrec" else None)),
            _fmt(counts["total"]),
            _fmt(counts["trainable"]),
            _fmt(finals.get((name, "train"), {}).get("peak_rss_mb"), 0),
            _fmt(finals.get((name, "infer"), {}).get("peak_rss_mb"), 0),
            *[_fmt(t.get(m), 4) for m in ("ndcg@10", "hr@10", "mrr")],
        ]
        lines.append("| " + " | ".join(cells) + " |")
        cells = [
            label,
            _fmt(s_step, 3),
            _fmt(best(name, "train"), 3),
            _fmt(None if s_step is None else s_step * steps_per_epoch, 1),
            _fmt(get(name, "infer", "users_per_s"), 1),
            _fmt(best(name, "infer"), 1),
            _fmt(get(name, "infer", "ms_per_batch"), 1),
        ]
        speed.append("| " + " | ".join(cells) + " |")
    lines += ["", *speed]
    distill_only = info[("student", "train")]["params"].get("distill_only")
    lines += [
        "",
        "¹ The distilled student deploys the student alone: inference is the student's, and total/trainable count the "
        f"student (training also updates {_fmt(distill_only)} distillation-only head/projector parameters). Its "
        "training step runs the student with the frozen teacher's block features, cached (every epoch after the "
        "first) or computed by a no_grad teacher forward on each step (the first epoch, or cache_teacher=false).",
        f"² E4SRec full = all {spec['full_layers']} layers of the backbone with untrained LoRA (timing only: no "
        "metrics); same input map, score head and LoRA targets as the others.",
        "Peak RSS = the high-water mark of that model's own worker process (VmHWM of /proc/self/status on Linux; "
        f"ru_maxrss elsewhere), which includes ~{statistics.median(i['rss_import_mb'] for i in info.values()):.0f} MB "
        "of Python + torch + transformers + peft imports; the KD training worker also holds the fp16 "
        "teacher-feature cache of the whole training set.",
    ]
    cuda = [f"{ROWS[n][0]} {ph} {f['peak_cuda_mb']:.0f}" for (n, ph), f in finals.items() if "peak_cuda_mb" in f]
    if cuda:
        lines += ["Peak GPU memory (torch.cuda.max_memory_allocated), MB: " + "; ".join(cuda) + "."]
    notes = [f"{n}: {t['note']}" for n, t in trained.items() if t.get("note")]
    if notes:
        lines += ["Metrics not shown — " + "; ".join(notes) + "."]
    pipeline = [f"{n} {t['pipeline_s_per_epoch']:.1f} s/epoch ({t['pipeline_epochs']} epochs)"
                for n, t in trained.items() if "pipeline_s_per_epoch" in t]
    if pipeline:
        lines += [f"Metrics: `{spec['metrics']}` (test split, full ranking). The training run behind them measured "
                  + "; ".join(pipeline) + " (its own run, not side by side)."]

    def slower(a: str, b: str, phase: str) -> tuple[float | None, str]:
        """How many times longer `a` takes than `b` (train: per step; infer: per user), paired within each round.

        Each round measures every model within a few minutes, so a's and b's times of one round saw similar
        load from other jobs: the median of the per-round ratios is steadier than a ratio of medians.
        """
        if (a, phase) not in rounds or (b, phase) not in rounds:
            return None, "— | —"
        if phase == "train":
            ratios = [ra["s_per_step"] / rb["s_per_step"] for ra, rb in zip(rounds[(a, phase)], rounds[(b, phase)])]
        else:  # users/s is a rate
            ratios = [rb["users_per_s"] / ra["users_per_s"] for ra, rb in zip(rounds[(a, phase)], rounds[(b, phase)])]
        mid = statistics.median(ratios)
        best_ratio = best(a, phase) / best(b, phase) if phase == "train" else best(b, phase) / best(a, phase)
        return mid, f"{mid:.2f}× ({min(ratios):.2f}–{max(ratios):.2f}) | {best_ratio:.2f}×"

    def verdict(x: float | None, target: float) -> str:
        return "—" if x is None else ("met" if x >= target else "NOT met")

    p = lambda n, k: info[(n, ROWS[n][1][0])]["params"].get(k)  # noqa: E731
    infer_x, infer_cell = slower("e4srec_full", "student", "infer")
    train_x, train_cell = slower("e4srec_full", "student_nokd", "train")
    lines += [
        "",
        "Ratios of wall-clock times: the median over rounds of the ratio within each round (in brackets: lowest and "
        "highest round), and the ratio of the two models' best rounds (least disturbed by other jobs):",
        "",
        "| ratio | paired median (range) | best rounds |",
        "|---|---:|---:|",
        f"| training time per step, teacher / student_nokd | {slower('teacher', 'student_nokd', 'train')[1]} |",
        f"| training time per step, teacher / student (KD, cached teacher) | "
        f"{slower('teacher', 'student', 'train')[1]} |",
        f"| training time per step, teacher / student (KD, teacher fwd) | "
        f"{slower('teacher', 'student_kd_fwd', 'train')[1]} |",
        f"| inference time per user, teacher / student | {slower('teacher', 'student', 'infer')[1]} |",
        f"| inference time per user, teacher / student_nokd | {slower('teacher', 'student_nokd', 'infer')[1]} |",
        f"| **inference speed-up, student vs E4SRec full** (target ≥ 6×: {verdict(infer_x, 6)}) | {infer_cell} |",
        f"| **training speed-up, student_nokd vs E4SRec full** (target ≥ 5×: {verdict(train_x, 5)}) | {train_cell} |",
        f"| training speed-up, student (KD, cached teacher) vs E4SRec full | "
        f"{slower('e4srec_full', 'student', 'train')[1]} |",
        f"| training speed-up, student (KD, teacher fwd) vs E4SRec full | "
        f"{slower('e4srec_full', 'student_kd_fwd', 'train')[1]} |",
        "",
        "Targets are judged on the paired median. Parameters, student / E4SRec full: "
        f"{_ratio(p('student', 'total'), p('e4srec_full', 'total'))} of the total, "
        f"{_ratio(p('student', 'decoder_layers'), p('e4srec_full', 'decoder_layers'))} of the decoder-layer "
        "parameters (the rest is the token embedding table, which every depth keeps).",
        "",
        f"Per-round values (rounds visit the workers in alternating order); load average after each round: "
        + ", ".join(f"{x[0]:.2f}" for x in loads[1:]) + ".",
        "",
        "| model | phase | per round | spread (max−min)/median |",
        "|---|---|---|---:|",
    ]
    for (name, phase), rs in rounds.items():
        metric = "s_per_step" if phase == "train" else "users_per_s"
        values = [r[metric] for r in rs]
        unit = "s/step" if phase == "train" else "users/s"
        spread = (max(values) - min(values)) / statistics.median(values)
        lines.append(f"| {ROWS[name][0]} | {phase} | {', '.join(f'{v:.4g}' for v in values)} {unit} | {spread:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=("tiny", "smol", "hf"), default="smol")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--splits", default="data/splits")
    ap.add_argument("--models", default="models", help="trained model dirs (sasrec, teacher, student_nokd, student)")
    ap.add_argument("--metrics", default="results/metrics.json", help="test metrics of the trained models")
    ap.add_argument("--batch-size", type=int, help="LLM training batch (default: params train_llm.batch_size)")
    ap.add_argument("--eval-batch-size", type=int, help="inference batch (default: params train_llm.eval_batch_size)")
    ap.add_argument("--steps", type=int, default=1, help="timed optimizer steps per model per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--infer-users", type=int, help="time inference on the first N test users (default: all)")
    ap.add_argument("--full-layers", type=int, help="layers of the E4SRec-full row (default: the backbone's depth)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", action="store_true", help="first train the chain quickly on --max-users users")
    ap.add_argument("--interactions", default="data/interactions", help="--train: the Parquet snapshot to sample")
    ap.add_argument("--max-users", type=int, help="--train: deterministic user sample size")
    ap.add_argument("--epochs", type=int, help="--train: epochs for every model (default: params.yaml)")
    ap.add_argument("--work", help="--train: folder for splits/models/metrics (default: a new temp folder)")
    ap.add_argument("--out", default="bench/results_models.md")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    args.argv = sys.argv[1:] if argv is None else argv
    for name in ("steps", "rounds", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not args.train and (args.max_users or args.epochs is not None or args.work):
        ap.error("--max-users, --epochs and --work only apply with --train")

    torch.set_num_threads(args.threads)
    start, loads = time.perf_counter(), [os.getloadavg()]
    params = bench_params(args)
    splits, models, metrics = args.splits, args.models, args.metrics
    if args.train:
        work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_models_"))
        print(f"train mode: working in {work}", file=sys.stderr)
        splits, models, metrics = train_chain(args, params, work)
    sasrec_dir = Path(models) / "sasrec"
    spec = {
        "params": to_dict(params),
        "splits": str(splits),
        "metrics": str(metrics),
        "sasrec_dir": str(sasrec_dir) if (sasrec_dir / "model.pt").is_file() else None,
        "full_layers": args.full_layers or load_backbone(params.llm, 1).full_layers,
        "steps": args.steps,
        "batch_size": args.batch_size or params.train_llm.batch_size,
        "eval_batch_size": args.eval_batch_size or params.train_llm.eval_batch_size,
        "infer_users": args.infer_users,
        "threads": args.threads,
        "seed": args.seed,
    }
    print(f"full-depth row: {spec['full_layers']} layers; item table: {spec['sasrec_dir'] or 'untrained SASRec'}",
          file=sys.stderr)

    workers: dict[tuple[str, str], Worker] = {}
    finals: dict[tuple[str, str], dict] = {}
    try:
        for name, (_, phases) in ROWS.items():
            for phase in phases:  # started one after another: builds don't overlap
                t0 = time.perf_counter()
                workers[(name, phase)] = Worker(name, phase, spec)
                print(f"ready {name}/{phase} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        rounds: dict[tuple[str, str], list[dict]] = {key: [] for key in workers}
        keys = list(workers)
        for r in range(args.rounds):
            for key in keys if r % 2 == 0 else reversed(keys):
                rounds[key].append(workers[key].ask("run"))
                print(f"round {r + 1} {key[0]}/{key[1]}: {rounds[key][-1]}", file=sys.stderr)
            loads.append(os.getloadavg())
        for key, w in workers.items():
            finals[key] = w.close()
    finally:
        for w in workers.values():
            if w.proc.poll() is None:
                w.proc.kill()
    info = {key: w.info for key, w in workers.items()}
    configs = {name: info[(name, "infer")]["config"] for name in TRAINED}
    trained = trained_results(Path(models), Path(metrics), configs, load_splits(splits).dataset_hash)
    table = report(args, params, spec, info, rounds, finals, trained, loads, time.perf_counter() - start)
    atomic_write_text(args.out, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
