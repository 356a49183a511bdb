"""Training's parts that are not the loop: device and precision choice, optimiser and schedule, metrics, and
checkpoints (atomic writes, RNG states, the resume check). `photo_detector.train` re-exports the public names.
"""

from __future__ import annotations

import csv
import ctypes
import io
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from photo_detector.config import Config
from photo_detector.errors import PhotoDetectorError
from photo_detector.io import atomic_path, write_text_atomic
from photo_detector.metrics import binary_metrics  # noqa: F401 - re-exported
from photo_detector.parallel import Shard

METRIC_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_precision",
                  "val_recall", "val_f1", "learning_rate", "images_per_second", "seconds")
# Per-epoch values that measure the machine, not the training: they differ between identical runs.
TIMING_KEYS = ("seconds", "images_per_second", "gpu_peak_memory_mib")
# Keys that may differ between a run and its resume without changing the result (a budget only says when
# to stop, not how each epoch trains).
# train.gpus is among them: N processes train like one on the same global batch (photo_detector.parallel), so
# an attempt may resume on fewer or more GPUs.
# train.nodes likewise; train.checkpoint_every_minutes says when to save, not what is computed, and
# train.stage_mb where the bytes are read from, not which.
RESUME_FREE_KEYS = {("data", "num_workers"), ("train", "device"), ("train", "max_minutes"), ("train", "gpus"),
                    ("train", "nodes"), ("train", "checkpoint_every_minutes"), ("train", "stage_mb")}


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


def rng_state(gens: dict[str, torch.Generator]) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                             "python": random.getstate(),
                             "generators": {k: g.get_state() for k, g in gens.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], gens: dict[str, torch.Generator]) -> None:
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


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[str]:
    diffs: list[str] = []
    for key in a:
        path = (*prefix, key)
        if isinstance(a[key], dict):
            diffs += config_diff(a[key], b.get(key, {}), path)
        elif path not in RESUME_FREE_KEYS and a[key] != b.get(key):
            diffs.append(f"{'.'.join(path)} ({b.get(key)!r} in the checkpoint, {a[key]!r} now)")
    return diffs


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row.get(k), float) else row.get(k, ""))
                         for k in METRIC_COLUMNS})
    write_text_atomic(path, buf.getvalue())


def budget_reached(spent: float, history: list[dict[str, float]], max_minutes: float) -> bool:
    """Would the next epoch end past `max_minutes`? Estimated from the slowest of the last three epochs
    (the first epoch always runs: without one there is no model)."""
    if max_minutes <= 0 or not history:
        return False
    next_epoch = max(r["seconds"] for r in history[-3:])
    return spent + next_epoch > max_minutes * 60


def improved(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if mode == "max" else value < best


def resume_checkpoint(last_path: Path, cfg: Config) -> dict[str, Any]:
    """The interrupted run's checkpoint, after checking that `cfg` asks for the same training; its config
    takes this run's values of the keys that may change between attempts (RESUME_FREE_KEYS)."""
    if not last_path.is_file():
        raise PhotoDetectorError(f"--resume: {last_path} does not exist", "start a new run without --resume")
    ckpt = load_checkpoint(last_path)
    diffs = config_diff(cfg.to_dict(), ckpt["config"])
    if diffs:
        raise PhotoDetectorError(f"--resume: the config differs from the checkpoint's at {'; '.join(diffs)}",
                                 "resume with the same config and flags as the interrupted run")
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in ckpt["config"].items()}
    for section, key in RESUME_FREE_KEYS:
        merged[section][key] = getattr(getattr(cfg, section), key)
    ckpt["config"] = merged
    return ckpt


class MidEpoch:
    """The mid-epoch checkpoint policy: save when train.checkpoint_every_minutes have passed since the last
    save, by rank 0's clock (agreed by every rank: the save gathers the running sums, a collective)."""

    def __init__(self, minutes: float, shard: Shard, save: Callable[[int, list[float]], None]) -> None:
        self.seconds, self.shard, self.save = minutes * 60, shard, save
        self.last = time.monotonic()

    def __call__(self, step: int, sums: list[float]) -> None:
        if not self.shard.agree(time.monotonic() - self.last >= self.seconds):
            return
        self.save(step, self.shard.sum(sums))
        self.last = time.monotonic()

    def epoch_saved(self) -> None:
        self.last = time.monotonic()
