"""The pretraining loop: one readable file, the math visible (nanoGPT style), run under accelerate.

Per optimizer step: ``grad_accum`` micro-batches of ``batch_size`` clips per process -> losses ->
backward (DDP all-reduces on the last micro-batch) -> clip -> AdamW with the lr of a linear warm-up
then cosine to 0 -> EMA teacher update with the annealed decay. Everything random in a step (masks,
decoder noise) is seeded from (seed, step, rank), and data order from (seed, epoch), so a run resumed
from a checkpoint repeats the uninterrupted run exactly.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from sslam.config import Config, StageConfig
from sslam.features.dataset import FeatureStore, ShardedSampler
from sslam.io import write_json_atomic
from sslam.pretrain.ema import ema_decay, ema_update
from sslam.pretrain.targets import PositionCentring
from sslam.pretrain.model import (
    Stage2Settings,
    StepSettings,
    Student,
    WaveformInputs,
    make_teacher,
    stage1_losses,
    stage2_losses,
)


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or inf; names the step, the term and the last good checkpoint."""


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up from 0, then cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: torch.nn.Module, weight_decay: float, decay_all: bool) -> list[dict]:
    if decay_all:  # the reference decays every parameter (see sslam-eat-reference-facts.md)
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith("cls_token") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------- checkpoints


def _code_hash() -> str:
    """The model and training code: a checkpoint made by other code is not resumed."""
    import hashlib

    import sslam.models
    import sslam.pretrain

    h = hashlib.sha256()
    for pkg in (sslam.models, sslam.pretrain):
        for f in sorted(Path(pkg.__file__).parent.glob("*.py")):
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def _fingerprint(cfg: Config, stage: str, init_from: Path | None) -> dict:
    fp = {"stage": stage, "model": cfg.model.model_dump(), "mask": cfg.mask.model_dump(),
          "train": getattr(cfg.pretrain, stage).model_dump(), "seed": cfg.pretrain.seed,
          "train_set": cfg.pretrain.train_set, "code": _code_hash()}
    if stage == "stage2":
        import hashlib

        fp |= {"mix": cfg.mix.model_dump(), "srl": cfg.srl.model_dump(),
               "init": hashlib.sha256((init_from / "student.safetensors").read_bytes()).hexdigest()[:16]}
    return fp


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    done = sorted(p for p in ckpt_dir.glob("step-*") if (p / "meta.json").is_file())
    return done[-1] if done else None


def save_checkpoint(ckpt_dir: Path, step: int, student: torch.nn.Module, teacher: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, meta: dict, keep: int,
                    centring: PositionCentring | None = None) -> Path:
    """Weights as safetensors, optimizer and RNG state as torch pickles; written to a temporary folder
    renamed into place, meta.json last, so a half-written checkpoint is never taken for one."""
    final = ckpt_dir / f"step-{step:07d}"
    tmp = ckpt_dir / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}, tmp / "student.safetensors")
    save_file({k: v.detach().cpu().contiguous() for k, v in teacher.state_dict().items()}, tmp / "teacher.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                "centring": centring.state_dict() if centring is not None else {}}, tmp / "train_state.pt")
    write_json_atomic(tmp / "meta.json", meta | {"step": step})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    older = sorted(p for p in ckpt_dir.glob("step-*") if p != final)
    for old in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def export_final(ckpt_dir: Path, student: torch.nn.Module, teacher: torch.nn.Module, meta: dict,
                 centring: PositionCentring | None = None) -> None:
    """``final/``: the weights later stages load (student encoder + decoder, and the EMA teacher; with
    ``center_targets: running`` also the running target means, for the diagnostics)."""
    tmp = ckpt_dir / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}, tmp / "student.safetensors")
    save_file({k: v.detach().cpu().contiguous() for k, v in teacher.state_dict().items()}, tmp / "teacher.safetensors")
    if centring is not None and centring.means:
        save_file(centring.state_dict(), tmp / "centring.safetensors")
    write_json_atomic(tmp / "meta.json", meta)
    shutil.rmtree(ckpt_dir / "final", ignore_errors=True)
    os.replace(tmp, ckpt_dir / "final")


# ----------------------------------------------------------------------------- logging


def _truncate_live(live_dir: Path, step: int) -> None:
    """Drop rows logged after the checkpoint we resume from (a killed run logged past it)."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        head, rows = lines[0], lines[1:]
        col = head.split("\t").index("step")
        kept = [r for r in rows if int(r.split("\t")[col]) < step]
        tsv.write_text("\n".join([head, *kept]) + "\n")


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass
class RunResult:
    steps: int
    final_loss: dict[str, float]
    seconds: float
    samples_per_second: float
    resumed_from: int


def train_stage(cfg: Config, stage: str, features_dir: str | Path, ckpt_dir: str | Path, live_dir: str | Path | None,
                cpu: bool = False, stop_after: int | None = None, init_from: str | Path | None = None,
                step_hook: Callable[[int, dict], None] | None = None,
                end_hook: Callable[[torch.nn.Module, torch.nn.Module], None] | None = None) -> RunResult:
    """Pretrain ``stage`` ('stage1' or 'stage2'); resumes from the newest complete checkpoint in
    ``ckpt_dir``. Stage 2 starts from ``init_from`` (stage 1's ``final/``): its student and EMA teacher;
    the step counter, the EMA anneal and the warm-up restart (reference)."""
    scfg: StageConfig = getattr(cfg.pretrain, stage)
    if stage == "stage2":
        if init_from is None or not (Path(init_from) / "student.safetensors").is_file():
            raise FileNotFoundError(f"stage 2 starts from stage 1's final checkpoint: {init_from}/student.safetensors is missing")
        init_from = Path(init_from)
    precision = {"fp32": "no"}.get(cfg.pretrain.mixed_precision, cfg.pretrain.mixed_precision)
    acc = Accelerator(cpu=cpu, mixed_precision=precision)
    if acc.device.type == "cpu":  # `accelerate launch` sets OMP_NUM_THREADS=1: give each process its cores
        local = int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes))
        torch.set_num_threads(cfg.pretrain.cpu_threads or max(1, (os.cpu_count() or 1) // local))
    ckpt_dir = Path(ckpt_dir)
    store = FeatureStore(features_dir, cfg.pretrain.train_set)
    frames, mel = store.raw(0).shape
    torch.manual_seed(cfg.pretrain.seed)  # identical initial weights on every rank
    student = Student(cfg.model, frames, mel)
    teacher = make_teacher(student)
    optimizer = torch.optim.AdamW(param_groups(student, scfg.weight_decay, scfg.decay_all_params),
                                  lr=scfg.lr, betas=tuple(scfg.betas), eps=1e-8)
    fingerprint = _fingerprint(cfg, stage, init_from)
    centring = PositionCentring(scfg.center_targets, scfg.center_momentum)  # stage 2 starts its own means
    start = 0
    if acc.is_main_process:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()
    last = latest_checkpoint(ckpt_dir)
    if last is not None and json.loads((last / "meta.json").read_text()).get("fingerprint") != fingerprint:
        acc.wait_for_everyone()
        if acc.is_main_process:  # other params: these checkpoints cannot be resumed
            for p in ckpt_dir.iterdir():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        acc.wait_for_everyone()
        last = None
    if last is not None:
        student.load_state_dict(load_file(last / "student.safetensors"))
        teacher.load_state_dict(load_file(last / "teacher.safetensors"))
        state = torch.load(last / "train_state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        centring.load_state_dict(state.get("centring", {}))
        start = json.loads((last / "meta.json").read_text())["step"]
        acc.print(f"resuming {stage} from {last} (step {start})")
    elif init_from is not None:
        student.load_state_dict(load_file(init_from / "student.safetensors"))
        teacher.load_state_dict(load_file(init_from / "teacher.safetensors"))
        acc.print(f"{stage} starts from {init_from}")
    teacher.to(acc.device)
    centring.to(acc.device)
    student, optimizer = acc.prepare(student, optimizer)

    settings = StepSettings(clones=scfg.clone_batch or cfg.mask.clone_batch, mask_ratio=cfg.mask.ratio,
                            block=cfg.mask.block_size, adjust=cfg.mask.prob_adjust, top_k=scfg.top_k_layers,
                            cls_weight=scfg.cls_loss_weight, cls_reduction=scfg.cls_loss_reduction,
                            center=scfg.center_targets)
    if stage == "stage2":
        s2 = Stage2Settings(settings, scfg.variant, scfg.global_top_k_layers, scfg.global_unmixed, scfg.global_mixed,
                            cfg.srl.weight, cfg.srl.aggregation, cfg.mix.strategy, cfg.mix.partial,
                            cfg.mix.partial_mode, cfg.mix.mixed_fraction, cfg.model.patch_size,
                            srl_global=cfg.srl.global_loss)
        hop = int(cfg.data.sample_rate * cfg.features.frame_shift_ms / 1000)

        def step_losses(x, idx, seed):
            wave = None
            if s2.strategy == "waveform" and s2.variant != "mb_ua":
                wave = WaveformInputs(store.waves(idx).to(acc.device), store.wave_lengths(idx), hop, store.mean,
                                      store.std, cfg.data.sample_rate, cfg.features.num_mel_bins,
                                      cfg.features.frame_length_ms)
            return stage2_losses(student, teacher, x, s2, seed, wave, centring)
    else:
        def step_losses(x, idx, seed):
            return stage1_losses(student, teacher, x, settings, seed, centring)
    sampler = ShardedSampler(len(store), acc.process_index, acc.num_processes, seed=cfg.pretrain.seed)
    per_step = scfg.batch_size * scfg.grad_accum
    batches_per_epoch = len(sampler) // scfg.batch_size
    if batches_per_epoch == 0:
        raise ValueError(f"pretrain.{stage}.batch_size {scfg.batch_size} exceeds the {len(sampler)} clips per process")
    epoch_cache: dict[int, list[int]] = {}

    def micro_batch(k: int) -> tuple[torch.Tensor, list[int]]:
        epoch, b = divmod(k, batches_per_epoch)
        if epoch not in epoch_cache:
            epoch_cache.clear()
            sampler.set_epoch(epoch)
            epoch_cache[epoch] = list(sampler)
        idx = epoch_cache[epoch][b * scfg.batch_size : (b + 1) * scfg.batch_size]
        return store.batch(idx).to(acc.device), idx

    live = None
    if acc.is_main_process and live_dir is not None:
        from dvclive import Live

        if start:
            _truncate_live(Path(live_dir), start)
        live = Live(str(live_dir), resume=start > 0, save_dvc_exp=False, dvcyaml=None, report=None)
        live.step = start

    last_ckpt = str(last) if last is not None else "none (no checkpoint yet)"
    logs: dict[str, float] = {}
    t_start, t_log, n_log = time.perf_counter(), time.perf_counter(), 0
    end = scfg.steps if stop_after is None else min(scfg.steps, stop_after)
    student.train()
    for step in range(start, end):
        lr = lr_at(step, scfg.lr, scfg.warmup_steps, scfg.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sums: dict[str, float] = {}
        for j in range(scfg.grad_accum):
            x, idx = micro_batch(step * scfg.grad_accum + j)
            seed = (cfg.pretrain.seed * 1_000_003 + step * 1009 + j) * 64 + acc.process_index
            sync = nullcontext() if j == scfg.grad_accum - 1 else acc.no_sync(student)
            with sync, acc.autocast():
                losses = step_losses(x, idx, seed)
            bad = torch.tensor([0.0 if torch.isfinite(v).all() else 1.0 for v in losses.values()], device=acc.device)
            bad = acc.reduce(bad, reduction="sum")
            if bad.any():
                term = list(losses)[int(torch.nonzero(bad)[0])]
                raise NonFiniteLoss(f"{stage} step {step}: loss term '{term}' is not finite "
                                    f"({losses[term].item()}); last good checkpoint: {last_ckpt}")
            acc.backward(losses["loss"] / scfg.grad_accum)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.item() / scfg.grad_accum
        if scfg.grad_clip > 0:
            acc.clip_grad_norm_(student.parameters(), scfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        decay = ema_decay(step, scfg.ema_decay[0], scfg.ema_decay[1], scfg.ema_anneal_steps)
        ema_update(teacher, acc.unwrap_model(student).encoder, decay)

        n_log += per_step * acc.num_processes
        logs = dict(sums)
        if step_hook is not None:
            step_hook(step, logs)
        if live is not None and (step % scfg.log_every == 0 or step == end - 1):
            now = time.perf_counter()
            for k, v in sums.items():
                live.log_metric(f"{stage}/{k}", v)
            live.log_metric(f"{stage}/lr", lr)
            live.log_metric(f"{stage}/ema_decay", decay)
            live.log_metric(f"{stage}/samples_per_s", n_log / max(now - t_log, 1e-9))
            live.log_metric(f"{stage}/memory_mb", _memory_mb(acc.device))
            live.next_step()
            t_log, n_log = now, 0
        done = step + 1
        if done % scfg.checkpoint_every == 0 or done == scfg.steps:
            acc.wait_for_everyone()
            if acc.is_main_process:
                last_ckpt = str(save_checkpoint(ckpt_dir, done, acc.unwrap_model(student), teacher, optimizer,
                                                {"fingerprint": fingerprint}, scfg.keep_checkpoints, centring))
            acc.wait_for_everyone()
    seconds = time.perf_counter() - t_start
    if end == scfg.steps:
        acc.wait_for_everyone()
        if acc.is_main_process:
            export_final(ckpt_dir, acc.unwrap_model(student), teacher, {"fingerprint": fingerprint, "step": end},
                         centring)
    if end_hook is not None:  # on every rank: (student, teacher), e.g. to compare ranks in a test
        end_hook(acc.unwrap_model(student), teacher)
    if live is not None:
        live.end()
    steps_run = end - start
    return RunResult(end, logs, seconds,
                     steps_run * per_step * acc.num_processes / max(seconds, 1e-9), start)
