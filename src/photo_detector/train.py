"""The training stage: decoded tensor store -> batched device augmentation -> AdamW/cosine -> best checkpoint
-> ONNX export. Resumable to the exact same result (all RNG states live in `last.pt`).
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import io
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from photo_detector.artifacts import BEST, CONFIG, HISTORY, LAST, LOGS, ONNX
from photo_detector.config import Config, from_dict
from photo_detector.data.augment import BatchAugment, degrade, eval_transform, jpeg_recompress, uint8_nchw
from photo_detector.data.layout import discover_split
from photo_detector.data.packed import dataset_digest, is_packed, read_manifest, read_packed
from photo_detector.data.store import ImageStore, load_store, store_size_for
from photo_detector.errors import DataError, PhotoDetectorError
from photo_detector.export import export_model_folder
from photo_detector.io import atomic_path, prepare_output_dir, write_text_atomic
from photo_detector.metrics import binary_metrics
from photo_detector.model import PhotoDetector, build_model, count_trainable
from photo_detector.parallel import Shard, ShardDropout, check_world, data_parallel, launch
from photo_detector.preprocess import Preprocess
from photo_detector.progress import progress
from photo_detector.tblog import EpochLog

log = logging.getLogger(__name__)

METRIC_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_precision",
                  "val_recall", "val_f1", "learning_rate", "images_per_second", "seconds")
# Per-epoch values that measure the machine, not the training: they differ between identical runs.
TIMING_KEYS = ("seconds", "images_per_second", "gpu_peak_memory_mib")
# Keys that may differ between a run and its resume without changing the result (a budget only says when
# to stop, not how each epoch trains).
# train.gpus is among them: N processes train like one on the same global batch (photo_detector.parallel), so
# an attempt may resume on fewer or more GPUs.
RESUME_FREE_KEYS = {("data", "num_workers"), ("train", "device"), ("train", "max_minutes"), ("train", "gpus")}


@dataclass
class TrainResult:
    out_dir: Path
    best_epoch: int
    best_val_accuracy: float
    best_metrics: dict[str, float]
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_by: str = "epochs"  # "epochs" | "early_stopping" | "budget"

    @property
    def stopped_early(self) -> bool:
        return self.stopped_by == "early_stopping"

    @property
    def onnx_path(self) -> Path:
        return self.out_dir / ONNX


# ---------------------------------------------------------------------------------------------------------
# Device and precision


def gpu_attached() -> bool:
    """An NVIDIA GPU is attached to this machine or container (device node), whether or not torch can use it,
    and not hidden on purpose (CUDA_VISIBLE_DEVICES empty or -1)."""
    import os

    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    return Path("/dev/nvidia0").exists()


def select_device(name: str, *, attached: Callable[[], bool] = gpu_attached) -> torch.device:
    """cuda, cpu, or auto (cuda when usable). A GPU that is attached but unusable is an error, not a silent
    CPU run: on a T4 task that would burn GPU hours at CPU speed (e.g. a driver older than torch's CUDA)."""
    usable = torch.cuda.is_available()
    if not usable and (name == "cuda" or (name == "auto" and attached())):
        why = "a GPU is attached but torch cannot use it" if name == "auto" else "no CUDA device is visible"
        raise PhotoDetectorError(
            f"config key 'train.device' is {name} and {why} (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda})", "the node's NVIDIA driver must support that CUDA version (CUDA 13: driver "
            ">= 580); or set train.device=cpu to train on the CPU anyway")
    if name == "auto":
        name = "cuda" if usable else "cpu"
    return torch.device(name)


def keep_freed_memory() -> bool:
    """Make glibc keep large freed blocks for reuse instead of unmapping them; True when applied.

    Why: each batch-sized tensor (38 MB for 64 x 224 x 224 x 3 float) is above glibc's mmap threshold, so it
    is mapped afresh and page-faulted on first touch every step; on 2 cores that was ~40% of the batched
    augmentation time. Kept blocks are reused at no cost; the price is that the process holds its peak
    heap, the same trade jemalloc/tcmalloc (the usual PyTorch CPU advice) make. Process-wide; a no-op where
    the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def cpu_has_amx() -> bool:
    probe = getattr(torch._C._cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def select_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for fp32. auto: fp16 AMP on CUDA; bf16 on CPUs with AMX, where it measures
    faster than fp32 (without AMX, e.g. AVX-512 BF16 alone, bf16 autocast measured ~1.5x slower)."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_has_amx() else None
    if precision == "fp16" and device.type != "cuda":
        raise PhotoDetectorError("config key 'train.precision' is fp16, which needs CUDA",
                                 "use auto, fp32 or bf16 on the CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# ---------------------------------------------------------------------------------------------------------
# Optimiser, schedule and metrics


def make_optimizer(params: list[nn.Parameter], cfg: Config, *, fused: bool = True) -> torch.optim.AdamW:
    """AdamW with the fused kernel (CPU and CUDA): one pass over all parameters instead of a loop over
    EfficientNet's ~200 tensors; +6% img/s per CPU train step at the sample profile's size. `fused=False`
    is the stock per-tensor loop, for the benchmark's baseline."""
    return torch.optim.AdamW(params, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay,
                             fused=fused)


def lr_lambda(step: int, *, steps_per_epoch: int, cfg: Config) -> float:
    """Per-step factor: linear warmup over warmup_epochs, then cosine decay to zero (or constant)."""
    warmup = cfg.train.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if cfg.train.scheduler == "constant":
        return 1.0
    total = max(1, cfg.train.epochs * steps_per_epoch - warmup)
    progress_ = min(1.0, (step - warmup) / total)
    return 0.5 * (1.0 + math.cos(math.pi * progress_))


# ---------------------------------------------------------------------------------------------------------
# Checkpoints


def _rng_state(gens: dict[str, torch.Generator]) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                             "python": random.getstate(),
                             "generators": {k: g.get_state() for k, g in gens.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], gens: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    for k, g in gens.items():
        g.set_state(state["generators"][k])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """torch.save to a temp file, then rename: a kill mid-write never leaves a corrupt checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise PhotoDetectorError(f"cannot read checkpoint {path}: {exc}",
                                 "delete it or start a new run with --force") from None


def _config_diff(a: dict[str, Any], b: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[str]:
    diffs: list[str] = []
    for key in a:
        path = (*prefix, key)
        if isinstance(a[key], dict):
            diffs += _config_diff(a[key], b.get(key, {}), path)
        elif path not in RESUME_FREE_KEYS and a[key] != b.get(key):
            diffs.append(f"{'.'.join(path)} ({b.get(key)!r} in the checkpoint, {a[key]!r} now)")
    return diffs


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row.get(k), float) else row.get(k, ""))
                         for k in METRIC_COLUMNS})
    write_text_atomic(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------------------
# The loop


def _load_data(data_dir: Path, cfg: Config) -> tuple[ImageStore, ImageStore, int, str]:
    """Train/val stores, their square size and the dataset's content digest, from a packed folder (written
    by verify-data: no decoding) or from image folders (decoded here)."""
    resize = cfg.data.resize_size
    if is_packed(data_dir):
        manifest = read_manifest(data_dir)
        if manifest["resize_size"] != resize:
            raise DataError(f"packed dataset {data_dir} was made for resize size {manifest['resize_size']} "
                            f"(image_size {manifest.get('image_size')}), this config needs {resize}",
                            "run verify-data with the same data.image_size and data.crop_pct as training")
        log.info("reading packed dataset %s (digest %s)", data_dir, manifest["digest"])
        return (read_packed(data_dir, "train"), read_packed(data_dir, "val"), int(manifest["store_size"]),
                manifest["digest"])
    splits = {s: discover_split(data_dir, s) for s in ("train", "val")}
    if (data_dir / "test").is_dir():
        splits["test"] = discover_split(data_dir, "test")
    size = store_size_for(splits["train"].paths, resize)
    return (load_store(splits["train"], size, cfg.data.num_workers),
            load_store(splits["val"], size, cfg.data.num_workers), size, dataset_digest(data_dir, splits))


class _Trainer:
    def __init__(self, cfg: Config, data_dir: Path, shard: Shard) -> None:
        self.cfg = cfg
        self.shard = shard
        self.device = select_device(cfg.train.device)
        if self.device.type == "cuda" and shard.distributed:
            self.device = torch.device("cuda", shard.rank)
        self.autocast_dtype = select_precision(cfg.train.precision, self.device)
        self.channels_last = cfg.train.channels_last

        self.train_store, self.val_store, store_size, self.data_digest = _load_data(data_dir, cfg)
        if len(self.train_store) < 2:
            raise DataError(f"{data_dir / 'train'} has {len(self.train_store)} image(s)",
                            "BatchNorm needs at least 2 training images")
        self.pp = Preprocess(store_size, cfg.data.resize_size, cfg.data.image_size,
                             tuple(cfg.data.mean), tuple(cfg.data.std))  # type: ignore[arg-type]
        if self.device.type == "cpu":
            keep_freed_memory()
        self.train_x = self._to_device(self.train_store)
        self.val_x = self._to_device(self.val_store)
        self.train_y = torch.from_numpy(self.train_store.labels).float()
        # The global batch (every process's rows together); each process trains on `self.rows` of it.
        self.batch_size = min(cfg.data.batch_size, len(self.train_store))
        self.batch_size -= self.batch_size % shard.world
        self.rows = shard.rows(self.batch_size)
        self.steps_per_epoch = len(self.train_store) // self.batch_size

        self.shuffle_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.aug_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 2)
        self.augment = BatchAugment(cfg.augmentation, self.pp, self.aug_gen)
        self.jpeg_gen = torch.Generator().manual_seed(cfg.seed + 3)
        self.dropout_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 4)
        self.jpeg = cfg.augmentation.jpeg_probability > 0
        # Shrink-and-restore and blur draw from the JPEG generator: off, they leave its sequence untouched.
        self.degrade = cfg.augmentation.downscale_probability > 0 or cfg.augmentation.blur_probability > 0
        self.loss_fn = nn.BCEWithLogitsLoss()

    def _to_device(self, store: ImageStore) -> torch.Tensor:
        """The uint8 store as NCHW; kept on the GPU when it fits comfortably (CIFAKE 32 px: ~300 MB)."""
        images = store.images if store.images.flags.writeable else np.array(store.images)  # memory-mapped
        x = uint8_nchw(torch.from_numpy(images))
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if store.images.nbytes < free // 4:
                return x.to(self.device)
            return x.pin_memory()
        return x

    def build(self, load_pretrained: bool) -> None:
        cfg = self.cfg
        self.model: PhotoDetector = build_model(cfg.model, load_pretrained=load_pretrained).to(self.device)
        for i, layer in enumerate(self.model.head):  # masks drawn per global batch (parallel.ShardDropout)
            if isinstance(layer, nn.Dropout):
                self.model.head[i] = ShardDropout(layer.p, self.dropout_gen, self.shard)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = data_parallel(self.model, self.device, self.shard)  # what the training step calls
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(params, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(s, steps_per_epoch=self.steps_per_epoch, cfg=cfg))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype is torch.float16)
        log.info("model %s: %d trainable parameters; device %s, autocast %s, channels_last %s, %d process(es), "
                 "global batch %d", cfg.model.name, count_trainable(self.model), self.device, self.autocast_dtype,
                 self.channels_last, self.shard.world, self.batch_size)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def forward_batch(self, perm: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, logits and labels of this process's rows of global batch `step` of the epoch order `perm`."""
        cfg = self.cfg
        # Random draws cover the global batch; this process keeps its rows (all of them in one process).
        idx = perm[step * self.batch_size:(step + 1) * self.batch_size][self.rows]
        draw = self.augment.draw(self.batch_size)[self.rows]
        yb = self.train_y[idx].to(self.device, non_blocking=True)
        # The store's device is "cuda:0" where self.device is "cuda", so compare types: same type means
        # the store lives where training runs and augment reads the batch from it in place.
        if self.train_x.device.type == self.device.type and not (self.jpeg or self.degrade):
            inputs = self.augment(self.train_x, channels_last=self.channels_last, index=idx, draw=draw)
        else:  # a copy of the batch: pinned host store, degradations or JPEG (never of the store itself)
            xb = self.train_x[idx]
            if self.degrade:
                xb = degrade(xb, cfg.augmentation, self.jpeg_gen, part=self.rows, total=self.batch_size)
            if self.jpeg:
                a = cfg.augmentation
                xb = jpeg_recompress(xb, a.jpeg_probability, (a.jpeg_quality[0], a.jpeg_quality[1]),
                                     self.jpeg_gen, part=self.rows, total=self.batch_size)
            inputs = self.augment(xb.to(self.device, non_blocking=True), channels_last=self.channels_last,
                                  draw=draw)
        with self._autocast():
            logits = self.net(inputs).float()
            loss = self.loss_fn(logits, yb)
        return loss, logits, yb

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        self.model.train()
        perm = torch.randperm(len(self.train_store), generator=self.shuffle_gen)
        loss_sum = correct = seen = 0.0
        bar = progress(total=self.steps_per_epoch, desc=f"epoch {epoch}/{cfg.train.epochs}", unit="batch",
                       disable=not self.shard.main)
        for step in range(self.steps_per_epoch):
            loss, logits, yb = self.forward_batch(perm, step)
            if not torch.isfinite(loss):
                raise PhotoDetectorError(f"training diverged at epoch {epoch}, step {step + 1}: loss is "
                                         f"{float(loss)}", "lower train.learning_rate or set train.grad_clip_norm")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.train.grad_clip_norm > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            n = len(yb)
            loss_sum += float(loss.detach()) * n
            correct += float(((logits.detach() >= 0) == (yb >= 0.5)).sum())
            seen += n
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
        bar.close()
        loss_sum, correct, seen = self.shard.sum([loss_sum, correct, seen])
        return {"train_loss": loss_sum / seen, "train_accuracy": correct / seen}

    @torch.inference_mode()
    def predict_store(self, x: torch.Tensor) -> np.ndarray:
        """Logits for a uint8 store through the eval preprocessing, in batches; each process scores its chunk
        and every process gets all logits (so all take the same best-epoch and stopping decisions)."""
        self.model.eval()
        part = x[self.shard.chunk(x.shape[0])]
        out = [torch.zeros(0)]
        for i in range(0, part.shape[0], self.batch_size):
            xb = eval_transform(part[i:i + self.batch_size].to(self.device), self.pp, self.channels_last)
            with self._autocast():
                out.append(self.model(xb).float().cpu())
        return self.shard.gather(torch.cat(out), x.shape[0]).numpy()

    def validate(self) -> dict[str, float]:
        logits = self.predict_store(self.val_x)
        if not np.all(np.isfinite(logits)):
            raise PhotoDetectorError("training diverged: the model outputs NaN or inf on validation images",
                                     "lower train.learning_rate or set train.grad_clip_norm")
        labels = self.val_store.labels
        loss = float(self.loss_fn(torch.from_numpy(logits), torch.from_numpy(labels).float()))
        m = binary_metrics(1 / (1 + np.exp(-np.clip(logits, -60, 60))), labels, self.cfg.thresholds.classification)
        return {"val_loss": loss, **{f"val_{k}": v for k, v in m.items()}}

    def state(self, epoch: int) -> dict[str, Any]:
        return {"model_state_dict": self.model.state_dict(),
                "optimizer_state_dict": self.optimizer.state_dict(),
                "scheduler_state_dict": self.scheduler.state_dict(),
                "scaler_state_dict": self.scaler.state_dict(),
                "epoch": epoch, "config": self.cfg.to_dict(), "preprocess": self.pp.to_dict()}

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model_state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
        self.scheduler.load_state_dict(ckpt["scheduler_state_dict"])
        self.scaler.load_state_dict(ckpt["scaler_state_dict"])


def budget_reached(spent: float, history: list[dict[str, float]], max_minutes: float) -> bool:
    """Would the next epoch end past `max_minutes`? Estimated from the slowest of the last three epochs
    (the first epoch always runs: without one there is no model)."""
    if max_minutes <= 0 or not history:
        return False
    next_epoch = max(r["seconds"] for r in history[-3:])
    return spent + next_epoch > max_minutes * 60


def _improved(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if mode == "max" else value < best


def run_train(data_dir: str | Path, out_dir: str | Path, cfg: Config, *, resume: bool = False,
              force: bool = False,
              on_epoch_end: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train on `data_dir/{train,val}` and write checkpoints, metrics.csv, model.onnx and model.json.

    `on_epoch_end(row)` is called after each epoch's checkpoints are on disk (pipelines log metrics with it).
    With train.gpus > 1 it runs in one process per GPU (see photo_detector.parallel) and is called in the
    first, so it must be picklable (a module-level function).
    """
    start = time.perf_counter()
    data_dir, out = Path(data_dir), Path(out_dir)
    ckpt = None
    if resume:
        ckpt = _resume_checkpoint(out / LAST, cfg)
        cfg = from_dict(ckpt["config"])
    world = cfg.train.gpus
    if world > 1:
        device = select_device(cfg.train.device)
        check_world(world, device, cfg.data.batch_size)
    prepare_output_dir(out, force=force, resume=resume)
    args = (data_dir, out, cfg, resume, on_epoch_end)
    if world == 1:
        result = _train(*args, Shard(), ckpt=ckpt)
    else:  # each process reads the checkpoint itself (no copy of it through the launcher)
        result = launch(_train, args, world, "nccl" if device.type == "cuda" else "gloo")
    result.seconds = time.perf_counter() - start
    return result


def _resume_checkpoint(last_path: Path, cfg: Config) -> dict[str, Any]:
    """The interrupted run's checkpoint, after checking that `cfg` asks for the same training; its config
    takes this run's values of the keys that may change between attempts (RESUME_FREE_KEYS)."""
    if not last_path.is_file():
        raise PhotoDetectorError(f"--resume: {last_path} does not exist", "start a new run without --resume")
    ckpt = load_checkpoint(last_path)
    diffs = _config_diff(cfg.to_dict(), ckpt["config"])
    if diffs:
        raise PhotoDetectorError(f"--resume: the config differs from the checkpoint's at {'; '.join(diffs)}",
                                 "resume with the same config and flags as the interrupted run")
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in ckpt["config"].items()}
    for section, key in RESUME_FREE_KEYS:
        merged[section][key] = getattr(getattr(cfg, section), key)
    ckpt["config"] = merged
    return ckpt


def _train(data_dir: Path, out: Path, cfg: Config, resume: bool,
           on_epoch_end: Callable[[dict[str, float]], None] | None, shard: Shard,
           ckpt: dict[str, Any] | None = None) -> TrainResult:
    """The training loop of one process; `shard` says which (rank 0 of 1 without DDP). `ckpt`: last.pt when
    the caller has read it already; else it is read here when resuming."""
    start = time.perf_counter()
    last_path = out / LAST
    if resume and ckpt is None:
        ckpt = load_checkpoint(last_path)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    trainer = _Trainer(cfg, data_dir, shard)
    trainer.build(load_pretrained=ckpt is None and cfg.model.pretrained)
    if shard.main:
        write_text_atomic(out / CONFIG, cfg.to_yaml())

    # Every process holds the same generator states (draws cover the global batch), so rank 0's are all.
    gens = {"shuffle": trainer.shuffle_gen, "augment": trainer.aug_gen, "jpeg": trainer.jpeg_gen,
            "dropout": trainer.dropout_gen}
    history: list[dict[str, float]] = []
    best: float | None = None
    best_epoch, bad_epochs, first_epoch, earlier_seconds = 0, 0, 1, 0.0
    if ckpt is not None:
        trainer.load_state(ckpt)
        _set_rng_state(ckpt["rng"], gens)
        history, best, best_epoch, bad_epochs = (ckpt["history"], ckpt["best_metric"], ckpt["best_epoch"],
                                                 ckpt["bad_epochs"])
        first_epoch = ckpt["epoch"] + 1
        earlier_seconds = float(ckpt.get("train_seconds", 0.0))  # the budget counts every attempt
        log.info("resuming %s after epoch %d (best %s %.4f at epoch %d)", out, ckpt["epoch"],
                 cfg.train.checkpoint_monitor, best or float("nan"), best_epoch)

    monitor, mode, patience = cfg.train.checkpoint_monitor, cfg.train.checkpoint_mode, \
        cfg.train.early_stopping_patience
    # Why training stopped: early stopping (also when resuming a run that had), the budget, or None until the
    # loop runs out of epochs.
    stopped_by: str | None = "early_stopping" if bad_epochs >= patience > 0 else None
    epoch = first_epoch - 1
    loop_start = time.perf_counter()
    # Closed however the loop ends, a diverged run included; only rank 0 writes logs and checkpoints.
    with EpochLog(out / LOGS) if shard.main else contextlib.nullcontext() as tb:
        while stopped_by is None and epoch < cfg.train.epochs:
            spent = earlier_seconds + time.perf_counter() - loop_start
            if shard.agree(budget_reached(spent, history, cfg.train.max_minutes)):
                stopped_by = "budget"
                log.info("time budget: %.1f of train.max_minutes=%g min spent; the next epoch would overrun it, so "
                         "training stops after epoch %d", spent / 60, cfg.train.max_minutes, epoch)
                break
            epoch += 1
            t0 = time.perf_counter()
            if trainer.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(trainer.device)
            row: dict[str, Any] = {"epoch": epoch, **trainer.train_epoch(epoch)}
            row["images_per_second"] = trainer.steps_per_epoch * trainer.batch_size / (time.perf_counter() - t0)
            row.update({**trainer.validate(), "learning_rate": trainer.optimizer.param_groups[0]["lr"]})
            if trainer.device.type == "cuda":
                row["gpu_peak_memory_mib"] = torch.cuda.max_memory_allocated(trainer.device) / 2**20
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            improved = _improved(row[monitor], best, mode)  # the same on every rank: gathered validation
            if improved:
                best, best_epoch, bad_epochs = row[monitor], epoch, 0
            else:
                bad_epochs += 1
            if bad_epochs >= patience > 0:
                stopped_by = "early_stopping"
            if not shard.main:
                continue
            state = trainer.state(epoch)
            if improved:
                save_checkpoint(out / BEST, {**state, "val_accuracy": row["val_accuracy"],
                                             "best_val_accuracy": row["val_accuracy"], "metrics": row})
            best_row = next(r for r in history if r["epoch"] == best_epoch)
            save_checkpoint(last_path, {**state, "val_accuracy": row["val_accuracy"],
                                        "best_val_accuracy": best_row["val_accuracy"], "history": history,
                                        "best_metric": best, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                                        "rng": _rng_state(gens),
                                        "train_seconds": earlier_seconds + time.perf_counter() - loop_start})
            _write_history(out / HISTORY, history)
            tb.epoch(row)
            log.info("epoch %d/%d  train_loss %.4f acc %.4f | val_loss %.4f acc %.4f f1 %.4f | lr %.2e | %.1fs%s",
                     epoch, cfg.train.epochs, row["train_loss"], row["train_accuracy"], row["val_loss"],
                     row["val_accuracy"], row["val_f1"], row["learning_rate"], row["seconds"],
                     "  *best*" if best_epoch == epoch else "")
            if on_epoch_end is not None:
                on_epoch_end(row)
    stopped_by = stopped_by or "epochs"
    if stopped_by == "early_stopping":
        log.info("early stopping: %s did not improve for %d epochs", monitor, patience)

    if not history:
        raise PhotoDetectorError(f"{out} holds no finished epoch", "start a new run with --force")
    if not shard.main:  # rank 0 exports; the result returned is rank 0's
        return TrainResult(out, best_epoch, float("nan"), {}, epoch, time.perf_counter() - start, history,
                           stopped_by)
    best_ckpt = load_checkpoint(out / BEST)
    # Several processes: export a plain model, not the training one whose BatchNorm layers synchronise over
    # processes (same state-dict keys); one process: the training model itself.
    model = build_model(cfg.model, load_pretrained=False) if shard.distributed else trainer.model
    model.load_state_dict(best_ckpt["model_state_dict"])
    best_row = best_ckpt["metrics"]
    export_model_folder(model, out, cfg, trainer.pp, trainer.val_store.images, trainer.val_store.labels,
                        checkpoint_file=BEST, best_epoch=best_ckpt["epoch"],
                        val_metrics={k: v for k, v in best_row.items() if k.startswith("val_")},
                        train_images=len(trainer.train_store), val_images=len(trainer.val_store),
                        data_digest=trainer.data_digest,
                        training={"epochs_run": epoch, "stopped_by": stopped_by,
                                  "max_minutes": cfg.train.max_minutes, "logs": LOGS})
    seconds = time.perf_counter() - start
    log.info("best epoch %d: val_accuracy %.4f; wrote %s in %.1fs", best_ckpt["epoch"],
             best_row["val_accuracy"], out, seconds)
    return TrainResult(out, best_ckpt["epoch"], best_row["val_accuracy"], dict(best_row), epoch, seconds, history,
                       stopped_by)

