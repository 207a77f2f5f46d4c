"""The pretraining loop: one readable file, the math visible (nanoGPT style), run under accelerate.

Per optimizer step: ``grad_accum`` micro-batches of ``batch_size`` clips per process -> losses ->
backward (DDP all-reduces on the last micro-batch) -> clip -> AdamW with the lr of a linear warm-up
then cosine to 0 -> EMA teacher update with the annealed decay. Everything random in a step (masks,
decoder noise) is seeded from (seed, step, rank), and data order from (seed, epoch), so a run resumed
from a checkpoint repeats the uninterrupted run exactly. The setup (accelerator, models, resume or
init, the objective, logging) sits in small functions above :func:`train_stage`, so the loop itself
fits on one screen.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from safetensors.torch import load_file

from sslam.checkpoints import own_input
from sslam.config.pretrain import PretrainParams, StageConfig
from sslam.data.clip_lists import clip_list_summary
from sslam.features.reader import FeatureStore, ShardedSampler
from sslam.io import writable_in_place, write_text_atomic
from sslam.pretrain.checkpoint import export_final, fingerprint, latest_checkpoint, load_checkpoint, save_checkpoint
from sslam.pretrain.ema import ema_decay, ema_update
from sslam.pretrain.objectives import LossSetup, StepLosses, get_objective
from sslam.pretrain.student import Student, make_teacher
from sslam.pretrain.targets import PositionCentring
from sslam.provenance import data_digest
from sslam.schedule import warmup_cosine_lr


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or inf; names the step, the term and the last good checkpoint."""


@dataclass
class RunResult:
    steps: int
    final_loss: dict[str, float]
    resumed_from: int
    world_size: int = 1
    replicas_identical: bool = True  # every rank ended with the same student and teacher weights
    clip_lists: dict[str, dict] = field(default_factory=dict)  # the features set trained on: clips, sha256


def param_groups(model: torch.nn.Module, weight_decay: float, decay_all: bool) -> list[dict]:
    if decay_all:  # the reference decays every parameter (see sslam-eat-reference-facts.md)
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            no_wd = p.ndim <= 1 or name.endswith(("cls_token", "mask_token")) or getattr(p, "_no_weight_decay", False)
            (no_decay if no_wd else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """The seed of one micro-batch's masks and decoder noise: distinct per (seed, step, micro, rank)."""
    return (seed * 1_000_003 + step * 1009 + micro) * 64 + rank


# ----------------------------------------------------------------------------- setup


def make_accelerator(cfg: PretrainParams, cpu: bool) -> Accelerator:
    acc = Accelerator(
        cpu=cpu or not torch.cuda.is_available(),  # without cpu=True accelerate runs each CPU worker alone
        mixed_precision={"fp32": "no"}.get(cfg.pretrain.mixed_precision, cfg.pretrain.mixed_precision),
    )
    launched = int(os.environ.get("WORLD_SIZE", 1))
    if acc.num_processes != launched:  # never train one copy per worker, silently
        raise RuntimeError(f"{launched} processes were started but accelerate joined {acc.num_processes}")
    if acc.device.type == "cpu":  # `accelerate launch` sets OMP_NUM_THREADS=1: give each process its cores
        local = int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes))
        torch.set_num_threads(cfg.pretrain.cpu_threads or max(1, (os.cpu_count() or 1) // local))
    return acc


def resume_or_init(
    acc: Accelerator,
    stage: str,
    ckpt_dir: Path,
    fp: dict,
    student: Student,
    teacher: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    centring: PositionCentring,
    init_from: Path | None,
) -> tuple[int, Path | None]:
    """Resume from the newest checkpoint made with the same fingerprint (older ones with another are
    deleted), else start from ``init_from`` (stage 2: stage 1's final weights) or the fresh init.
    Returns (first step, checkpoint resumed from)."""
    if acc.is_main_process:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()
    last = latest_checkpoint(ckpt_dir)
    if last is not None and json.loads((last / "meta.json").read_text()).get("fingerprint") != fp:
        acc.wait_for_everyone()
        if acc.is_main_process:  # other params or code: these checkpoints cannot be resumed
            for p in ckpt_dir.iterdir():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        acc.wait_for_everyone()
        last = None
    if last is not None:
        start = load_checkpoint(last, student, teacher, optimizer, centring)
        acc.print(f"resuming {stage} from {last} (step {start})")
        return start, last
    if init_from is not None:
        student.load_state_dict(load_file(init_from / "student.safetensors"))
        teacher.load_state_dict(load_file(init_from / "teacher.safetensors"))
        acc.print(f"{stage} starts from {init_from}")
    return 0, None


def make_objective(
    cfg: PretrainParams,
    stage: str,
    store: FeatureStore | None,  # stage 2's waveform mixing reads the waveforms; nothing else needs it
    device: torch.device,
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    centring: PositionCentring,
) -> StepLosses:
    """(clips, their store rows, seed) -> this stage's losses: ``pretrain.objective``'s stage-1 step (masked
    latent bootstrapping, SSAST, the overview's MSM, ...) or its stage 2 (SSLAM's Algorithm 1: bootstrap
    only), each from its module of ``sslam.pretrain.objectives``, the typed params sections passed whole."""
    objective = get_objective(cfg.pretrain.objective)
    factory = objective.stage1 if stage == "stage1" else objective.stage2
    if factory is None:
        raise ValueError(
            f"pretrain.objective {cfg.pretrain.objective!r} has no stage 2 to train (its stage 2 passes the "
            "stage-1 checkpoint through)"
        )
    return factory(LossSetup(cfg, student, teacher, centring, store, device))


def random_crops(x: torch.Tensor, valid: list[int], frames: int, generator: torch.Generator) -> torch.Tensor:
    """(B, T, mel) -> (B, frames, mel): per clip a window starting uniformly in [0, valid - frames] (its valid
    frames, so a crop holds no padding where the clip is long enough; from 0 where it is not)."""
    if frames > x.shape[1]:
        raise ValueError(f"pretrain.crop_seconds gives {frames} frames, the stored clips have {x.shape[1]}")
    starts = [int(torch.randint(max(1, v - frames + 1), (1,), generator=generator)) for v in valid]
    return torch.stack([x[i, s : s + frames] for i, s in enumerate(starts)])


class MicroBatches:
    """Micro-batch k of this process: its clips (on the device) and their store rows; epochs reshuffle.
    ``crop``: random windows of that many frames (seeded by ``seed``, k and the rank: a resumed run repeats).

    ``prefetch``: background threads read the next that many micro-batches from the store, each in its own
    thread, while the current one trains, so a step waits for its reads only when they are slower than
    that many steps. The threads only do I/O (numpy); normalising, cropping and the copy to the device stay
    in the loop, so nothing competes with training for cores and the batches are the same bytes.
    Batch k is a pure function of k, so what is read ahead is exactly what the loop would have read.
    ``read_log``: append each micro-batch's store rows to ``<read_log>/rank<r>.tsv`` (an audit of the split)."""

    def __init__(
        self,
        store: FeatureStore,
        acc: Accelerator,
        batch_size: int,
        seed: int,
        stage: str,
        crop: int | None = None,
        prefetch: int = 0,
        read_log: str | Path | None = None,
    ):
        self.store, self.device, self.batch_size, self.crop = store, acc.device, batch_size, crop
        self.seed, self.rank = seed, acc.process_index
        self.sampler = ShardedSampler(len(store), acc.process_index, acc.num_processes, seed=seed)
        self.per_epoch = len(self.sampler) // batch_size
        if self.per_epoch == 0:
            raise ValueError(
                f"pretrain.{stage}.batch_size {batch_size} exceeds the {len(self.sampler)} clips per process"
            )
        self._orders: dict[int, list[int]] = {}
        self._lock = threading.Lock()
        self.prefetch = prefetch
        # one thread per batch in flight: a cold read (disk, network filesystem) may take longer than a step
        self._pool = ThreadPoolExecutor(prefetch, thread_name_prefix="prefetch") if prefetch > 0 else None
        self._ahead: dict[int, Future] = {}
        self._log = None
        if read_log is not None:
            Path(read_log).mkdir(parents=True, exist_ok=True)
            self._log = open(writable_in_place(Path(read_log) / f"rank{self.rank}.tsv"), "a", buffering=1)

    def order(self, epoch: int) -> list[int]:
        """This process's clips of ``epoch``, in order (the last two epochs kept)."""
        with self._lock:
            if epoch not in self._orders:
                self.sampler.set_epoch(epoch)
                self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
                self._orders[epoch] = list(self.sampler)
            return self._orders[epoch]

    def rows(self, k: int) -> list[int]:
        """The store rows of micro-batch k."""
        epoch, b = divmod(k, self.per_epoch)
        return self.order(epoch)[b * self.batch_size : (b + 1) * self.batch_size]

    def __call__(self, k: int) -> tuple[torch.Tensor, list[int]]:
        ahead = self._ahead.pop(k, None)
        for stale in [j for j in self._ahead if j < k]:  # the loop moved on (a resume): drop what it skipped
            self._ahead.pop(stale).cancel()
        idx = self.rows(k)
        raw = ahead.result() if ahead is not None else self.store.read(idx)  # the read: the slow part
        if self._pool is not None:
            for j in range(k + 1, k + 1 + self.prefetch):
                if j not in self._ahead:
                    self._ahead[j] = self._pool.submit(self.store.read, self.rows(j))
        x = self.store.normalise(raw)
        if self.crop is not None:
            g = torch.Generator().manual_seed(step_seed(self.seed, k, 0, self.rank) + 7)
            x = random_crops(x, [self.store.frames(i) for i in idx], self.crop, g)
        if self._log is not None:
            self._log.write(f"{k // self.per_epoch}\t{k}\t{','.join(map(str, idx))}\n")
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), idx
        return x, idx

    def close(self) -> None:
        if self._pool is not None:
            for f in self._ahead.values():
                f.cancel()
            self._pool.shutdown(wait=True)
        if self._log is not None:
            self._log.close()


class LiveLog:
    """dvclive curves of the main process (every loss term, lr, EMA decay: what params and code decide),
    and, apart from them, a timings TSV (throughput and peak memory: what the machine decides), so a
    rerun of the same commit changes no tracked curve. A resumed run first drops the curve rows logged
    after its checkpoint."""

    def __init__(
        self,
        acc: Accelerator,
        live_dir: str | Path | None,
        timings: str | Path | None,
        stage: str,
        start: int,
        every: int,
    ):
        self.acc, self.stage, self.every, self.live, self.timings = acc, stage, every, None, None
        if acc.is_main_process and live_dir is not None:
            from dvclive import Live

            if start:
                _truncate_live(Path(live_dir), start)
            self.live = Live(str(live_dir), resume=start > 0, save_dvc_exp=False, dvcyaml=None, report=None)
            self.live.step = start
        if acc.is_main_process and timings is not None:
            path = Path(timings)
            path.parent.mkdir(parents=True, exist_ok=True)
            fresh = start == 0 or not path.is_file()
            self.timings = writable_in_place(path).open("w" if fresh else "a", buffering=1)  # one open per run
            if fresh:
                self.timings.write("step\tsamples_per_s\tmemory_mb\n")
        self.t_last, self.clips = time.perf_counter(), 0

    def log(self, step: int, last_step: bool, losses: dict[str, float], lr: float, decay: float, clips: int) -> None:
        self.clips += clips
        if not (step % self.every == 0 or last_step):
            return
        if self.live is not None:
            for k, v in losses.items():
                self.live.log_metric(f"{self.stage}/{k}", v)
            self.live.log_metric(f"{self.stage}/lr", lr)
            self.live.log_metric(f"{self.stage}/ema_decay", decay)
            self.live.next_step()
        now = time.perf_counter()
        if self.timings is not None:
            rate = self.clips / max(now - self.t_last, 1e-9)
            self.timings.write(f"{step}\t{rate:.2f}\t{_memory_mb(self.acc.device):.0f}\n")
        self.t_last, self.clips = now, 0

    def end(self) -> None:
        if self.live is not None:
            self.live.end()
        if self.timings is not None:
            self.timings.close()


def _truncate_live(live_dir: Path, step: int) -> None:
    """Drop rows logged after the checkpoint we resume from (a killed run logged past it)."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        head, rows = lines[0], lines[1:]
        col = head.split("\t").index("step")
        kept = [r for r in rows if int(r.split("\t")[col]) < step]
        write_text_atomic(tsv, "\n".join([head, *kept]) + "\n")


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _replicas_identical(acc: Accelerator, student: torch.nn.Module, teacher: torch.nn.Module) -> bool:
    """Did every rank end with bit-identical weights (what DDP promises)? One digest per rank, gathered."""
    h = hashlib.sha256()
    for module in (student, teacher):
        for k, v in module.state_dict().items():
            h.update(k.encode() + v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    if acc.num_processes == 1:
        return True
    return len(set(gather_object([h.hexdigest()]))) == 1


def check_finite(acc: Accelerator, losses: dict[str, torch.Tensor], where: str, last_ckpt: str) -> None:
    """Stop every process together when any process has a NaN or inf loss term."""
    bad = torch.tensor([0.0 if torch.isfinite(v).all() else 1.0 for v in losses.values()], device=acc.device)
    bad = acc.reduce(bad, reduction="sum")
    if bad.any():
        term = list(losses)[int(torch.nonzero(bad)[0])]
        raise NonFiniteLoss(
            f"{where}: loss term '{term}' is not finite ({losses[term].item()}); last good checkpoint: {last_ckpt}"
        )


# ----------------------------------------------------------------------------- the loop


def train_stage(
    cfg: PretrainParams,
    stage: str,
    features_dir: str | Path,
    ckpt_dir: str | Path,
    live_dir: str | Path | None,
    cpu: bool = False,
    stop_after: int | None = None,
    init_from: str | Path | None = None,
    step_hook: Callable[[int, dict], None] | None = None,
    end_hook: Callable[[torch.nn.Module, torch.nn.Module], None] | None = None,
    timings: str | Path | None = None,
    inputs: dict[str, str] | None = None,
    read_log: str | Path | None = None,
) -> RunResult:
    """Pretrain ``stage`` ('stage1' or 'stage2'); resumes from the newest complete checkpoint in
    ``ckpt_dir``. Stage 2 starts from ``init_from`` (stage 1's ``final/``): its student and EMA teacher;
    the step counter, the EMA anneal and the warm-up restart (reference). Curves go to ``live_dir``
    (dvclive), throughput and memory to the ``timings`` TSV. ``inputs``: the stage's code, params and data
    digests (:func:`sslam.provenance.stage_digest`); a checkpoint made with others is never resumed."""
    scfg: StageConfig = getattr(cfg.pretrain, stage)
    init_from = Path(init_from) if stage == "stage2" and init_from is not None else None
    if stage == "stage2" and (init_from is None or not (init_from / "student.safetensors").is_file()):
        raise FileNotFoundError(
            f"stage 2 starts from stage 1's final checkpoint: {init_from}/student.safetensors is missing"
        )
    acc = make_accelerator(cfg, cpu)
    ckpt_dir = Path(ckpt_dir)
    store = FeatureStore(features_dir, cfg.pretrain.train_set)
    clip_lists = {cfg.pretrain.train_set: clip_list_summary(store.index["clip_id"])}  # what the metrics record
    torch.manual_seed(cfg.pretrain.seed)  # identical initial weights on every rank
    frames, mel = store.raw(0).shape
    crop = cfg.pretrain.crop_frames(cfg.features.frame_shift_ms)
    student = Student(cfg.model, crop or frames, mel, cfg.pretrain.objective)
    teacher = make_teacher(student)
    optimizer = torch.optim.AdamW(
        param_groups(student, scfg.weight_decay, scfg.decay_all_params), lr=scfg.lr, betas=tuple(scfg.betas), eps=1e-8
    )
    centring = PositionCentring(scfg.center_targets, scfg.center_momentum)  # stage 2 starts its own means
    inputs = dict(inputs or {})
    if init_from is not None:  # stage 2's start: covered even when the caller gives no inputs
        inputs["init"] = data_digest([init_from])
    fp = fingerprint(cfg, stage, inputs, acc.num_processes)
    start, last = resume_or_init(acc, stage, ckpt_dir, fp, student, teacher, optimizer, centring, init_from)
    teacher.to(acc.device)
    centring.to(acc.device)
    student, optimizer = acc.prepare(student, optimizer)
    step_losses = make_objective(cfg, stage, store, acc.device, student, teacher, centring)
    batches = MicroBatches(
        store, acc, scfg.batch_size, cfg.pretrain.seed, stage, crop, cfg.pretrain.prefetch_batches, read_log
    )
    end = scfg.steps if stop_after is None else min(scfg.steps, stop_after)
    log = LiveLog(acc, live_dir, timings, stage, start, scfg.log_every)
    last_ckpt = str(last) if last is not None else "none (no checkpoint yet)"

    sums: dict[str, float] = {}
    student.train()
    for step in range(start, end):
        lr = warmup_cosine_lr(step, scfg.steps, scfg.warmup_steps, scfg.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sums = {}
        for j in range(scfg.grad_accum):
            x, idx = batches(step * scfg.grad_accum + j)
            sync = nullcontext() if j == scfg.grad_accum - 1 else acc.no_sync(student)
            with sync, acc.autocast():
                losses = step_losses(x, idx, step_seed(cfg.pretrain.seed, step, j, acc.process_index))
            check_finite(acc, losses, f"{stage} step {step}", last_ckpt)
            acc.backward(losses["loss"] / scfg.grad_accum)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.item() / scfg.grad_accum
        if scfg.grad_clip > 0:
            acc.clip_grad_norm_(student.parameters(), scfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        decay = ema_decay(step, scfg.ema_decay[0], scfg.ema_decay[1], scfg.ema_anneal_steps)
        ema_update(teacher, acc.unwrap_model(student).encoder, decay)

        if step_hook is not None:
            step_hook(step, dict(sums))
        log.log(step, step == end - 1, sums, lr, decay, scfg.batch_size * scfg.grad_accum * acc.num_processes)
        if (step + 1) % scfg.checkpoint_every == 0 or step + 1 == scfg.steps:
            acc.wait_for_everyone()
            if acc.is_main_process:
                last_ckpt = str(
                    save_checkpoint(
                        ckpt_dir,
                        step + 1,
                        acc.unwrap_model(student),
                        teacher,
                        optimizer,
                        {"fingerprint": fp},
                        scfg.keep_checkpoints,
                        centring,
                    )
                )
            acc.wait_for_everyone()

    if end == scfg.steps:
        acc.wait_for_everyone()
        if acc.is_main_process:
            trained_on = own_input(cfg.features, cfg.data.sample_rate, Path(features_dir) / "stats.json")
            meta = {"fingerprint": fp, "step": end}
            export_final(ckpt_dir, acc.unwrap_model(student), teacher, meta, centring, input_spec=trained_on)
    replicas_identical = _replicas_identical(acc, acc.unwrap_model(student), teacher)
    if end_hook is not None:  # on every rank: (student, teacher), e.g. to compare ranks in a test
        end_hook(acc.unwrap_model(student), teacher)
    batches.close()
    log.end()
    return RunResult(end, sums, start, acc.num_processes, replicas_identical, clip_lists)
