"""The training stage: packed shards (or image folders) -> streaming loader -> batched device augmentation ->
AdamW/cosine -> best checkpoint -> ONNX export. Resumable to the exact same result, from an epoch end or from
inside an epoch (`train.checkpoint_every_minutes`): `last.pt` holds the step, the sampler position (the
epoch and step; the order itself follows from the seed) and every RNG state.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from photo_detector.artifacts import BEST, CONFIG, HISTORY, LAST, LOGS, ONNX
from photo_detector.config import Config, from_dict
from photo_detector.data.augment import BatchAugment, degrade, eval_transform, jpeg_recompress, uint8_nchw
from photo_detector.data.loader import Prefetcher, Rows, Split, batches_of, epoch_order, load_data
from photo_detector.data.packed import PackedSplit
from photo_detector.data.staging import Fetch, StagedSplit
from photo_detector.errors import DataError, PhotoDetectorError
from photo_detector.export import export_model_folder
from photo_detector.io import prepare_output_dir, write_text_atomic
from photo_detector.model import PhotoDetector, build_model, count_trainable
from photo_detector.parallel import Shard, ShardDropout, check_world, data_parallel, launch, rendezvous
from photo_detector.preprocess import Preprocess
from photo_detector.progress import progress
from photo_detector.tblog import EpochLog
from photo_detector.train_support import (  # noqa: F401 - re-exported: the names callers import from here
    METRIC_COLUMNS,
    RESUME_FREE_KEYS,
    TIMING_KEYS,
    MidEpoch,
    binary_metrics,
    budget_reached,
    cpu_has_amx,
    gpu_attached,
    improved,
    keep_freed_memory,
    load_checkpoint,
    lr_lambda,
    make_optimizer,
    resume_checkpoint,
    rng_state,
    save_checkpoint,
    select_device,
    select_precision,
    set_rng_state,
    write_history,
)

log = logging.getLogger(__name__)


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
    main: bool = True  # False on a machine other than the first of train.nodes: it wrote nothing

    @property
    def stopped_early(self) -> bool:
        return self.stopped_by == "early_stopping"

    @property
    def onnx_path(self) -> Path:
        return self.out_dir / ONNX


class _Trainer:
    def __init__(self, cfg: Config, data_dir: Path, shard: Shard, stage: Fetch | None = None) -> None:
        self.cfg = cfg
        self.shard = shard
        self.device = select_device(cfg.train.device)
        if self.device.type == "cuda" and shard.distributed:
            self.device = torch.device("cuda", shard.local_rank)
        self.autocast_dtype = select_precision(cfg.train.precision, self.device)
        self.channels_last = cfg.train.channels_last

        self.train_split, self.val_split, store_size, self.data_digest = load_data(data_dir, cfg)
        if len(self.train_split) < 2:
            raise DataError(f"{data_dir / 'train'} has {len(self.train_split)} image(s)",
                            "BatchNorm needs at least 2 training images")
        self.pp = Preprocess(store_size, cfg.data.resize_size, cfg.data.image_size,
                             tuple(cfg.data.mean), tuple(cfg.data.std))  # type: ignore[arg-type]
        if self.device.type == "cpu":
            keep_freed_memory()
        self.train_x = self._resident(self.train_split)
        if self.train_x is None and stage is not None and cfg.train.stage_mb > 0 and \
                isinstance(self.train_split, PackedSplit):  # on Cloud Storage: whole shards to the boot disk
            self.train_split = StagedSplit(self.train_split, stage, cfg.train.stage_mb * 2**20)
        self.val_x = self._resident(self.val_split)
        self.train_y = torch.from_numpy(self.train_split.labels).float()
        # The global batch (every process's rows together); each process trains on `self.rows` of it.
        self.batch_size = min(cfg.data.batch_size, len(self.train_split))
        self.batch_size -= self.batch_size % shard.world
        self.rows = shard.rows(self.batch_size)
        self.steps_per_epoch = len(self.train_split) // self.batch_size
        log.info("training data: %d rows, %s; validation: %d rows, %s", len(self.train_split),
                 self._where(self.train_split, self.train_x), len(self.val_split),
                 self._where(self.val_split, self.val_x))

        self.aug_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 2)
        self.augment = BatchAugment(cfg.augmentation, self.pp, self.aug_gen)
        self.jpeg_gen = torch.Generator().manual_seed(cfg.seed + 3)
        self.dropout_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 4)
        self.jpeg = cfg.augmentation.jpeg_probability > 0
        # Shrink-and-restore and blur draw from the JPEG generator: off, they leave its sequence untouched.
        self.degrade = cfg.augmentation.downscale_probability > 0 or cfg.augmentation.blur_probability > 0
        self.loss_fn = nn.BCEWithLogitsLoss()

    @staticmethod
    def _where(split: Split, x: torch.Tensor | None) -> str:
        if x is not None:
            return f"resident on {x.device}"
        if isinstance(split, StagedSplit):
            return f"streamed from shards staged to {split.dir}"
        return "streamed from its shards"

    def _resident(self, split: Split) -> torch.Tensor | None:
        """The split as one uint8 NCHW tensor where training runs, when that is the fast path; else None and
        batches are streamed. Image folders (decoded in memory already) stay in memory on the CPU; on a GPU,
        data that fits comfortably (a quarter of free memory: CIFAKE 32 px is ~300 MB) is moved there shard
        by shard, never whole through host memory. Packed data on the CPU is streamed: memory stays flat."""
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if split.nbytes >= free // 4:
                return None
            x = torch.empty((len(split), split.size, split.size, 3), dtype=torch.uint8, device=self.device)
            if isinstance(split, PackedSplit):
                for k, s in enumerate(split.shards):
                    x[s.start:s.start + s.count] = torch.from_numpy(split.read_shard(k)).to(self.device)
            else:
                x.copy_(torch.from_numpy(split.read_all()))
            return uint8_nchw(x)
        if isinstance(split, PackedSplit):
            return None
        return uint8_nchw(torch.from_numpy(split.read_all()))

    def _read(self, split: Split) -> Callable[[np.ndarray], torch.Tensor]:
        """A loader thread's work: rows -> uint8 NCHW batch (pinned for an asynchronous copy to a GPU)."""
        def read(idx: np.ndarray) -> torch.Tensor:
            x = uint8_nchw(torch.from_numpy(split.read(idx)))
            return x.pin_memory() if self.device.type == "cuda" else x
        return read

    def epoch_batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """(this process's global indices, its uint8 batch or None when the split is resident) for every
        step of `epoch` from `start_step`: the order is epoch_order's, whatever the number of processes."""
        order = epoch_order(self.train_split.counts, self.cfg.seed, epoch)
        idxs = [order[s * self.batch_size:(s + 1) * self.batch_size][self.rows]
                for s in range(start_step, self.steps_per_epoch)]
        if self.train_x is not None:
            yield from ((torch.from_numpy(i), None) for i in idxs)
            return
        staged = self.train_split if isinstance(self.train_split, StagedSplit) else None
        if staged is not None:
            staged.plan(idxs)
        try:
            for i, xb in zip(idxs, Prefetcher(self._read(self.train_split), idxs), strict=True):
                yield torch.from_numpy(i), xb
        finally:
            if staged is not None:
                staged.finish()

    def close(self) -> None:
        """Deletes what the data needed on local disk (staged shards)."""
        if isinstance(self.train_split, StagedSplit):
            self.train_split.close()

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

    def forward_batch(self, idx: torch.Tensor,
                      xb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, logits and labels of this process's rows `idx` of a global batch; `xb` holds their images,
        or is None when the split is resident (augment then reads them from it in place)."""
        cfg = self.cfg
        # Random draws cover the global batch; this process keeps its rows (all of them in one process).
        draw = self.augment.draw(self.batch_size)[self.rows]
        yb = self.train_y[idx].to(self.device, non_blocking=True)
        if xb is None and not (self.jpeg or self.degrade):
            assert self.train_x is not None
            inputs = self.augment(self.train_x, channels_last=self.channels_last, index=idx, draw=draw)
        else:  # a batch of its own: streamed, or a copy for degradations or JPEG (never of the store itself)
            if xb is None:
                assert self.train_x is not None
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

    def train_epoch(self, epoch: int, start_step: int = 0, sums: tuple[float, float, float] = (0.0, 0.0, 0.0),
                    checkpoint: Callable[[int, list[float]], None] | None = None) -> dict[str, float]:
        """One epoch from `start_step` (a mid-epoch resume), with the running sums it had reached there.
        `checkpoint(step, global sums)` is offered every step: it decides (the same on every rank) whether
        to save."""
        cfg = self.cfg
        self.model.train()
        loss_sum, correct, seen = sums
        bar = progress(total=self.steps_per_epoch, initial=start_step, desc=f"epoch {epoch}/{cfg.train.epochs}",
                       unit="batch", disable=not self.shard.main)
        for step, (idx, xb) in enumerate(self.epoch_batches(epoch, start_step), start=start_step):
            loss, logits, yb = self.forward_batch(idx, xb)
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
            if checkpoint is not None and step + 1 < self.steps_per_epoch:
                checkpoint(step + 1, [loss_sum, correct, seen])
        bar.close()
        loss_sum, correct, seen = self.shard.sum([loss_sum, correct, seen])
        return {"train_loss": loss_sum / seen, "train_accuracy": correct / seen}

    @torch.inference_mode()
    def predict_split(self, split: Split, x: torch.Tensor | None) -> np.ndarray:
        """Logits for a split through the eval preprocessing, in batches; each process scores its chunk
        (streamed, or sliced from the resident tensor `x`) and every process gets all logits (so all take the
        same best-epoch and stopping decisions)."""
        self.model.eval()
        chunk = self.shard.chunk(len(split))
        batches = batches_of(range(chunk.start, chunk.stop), self.batch_size)
        source = (x[int(b[0]):int(b[-1]) + 1] for b in batches) if x is not None else \
            Prefetcher(self._read(split), batches)
        out = [torch.zeros(0)]
        for xb in source:
            xb = eval_transform(xb.to(self.device, non_blocking=True), self.pp, self.channels_last)
            with self._autocast():
                out.append(self.model(xb).float().cpu())
        return self.shard.gather(torch.cat(out), len(split)).numpy()

    def validate(self) -> dict[str, float]:
        logits = self.predict_split(self.val_split, self.val_x)
        if not np.all(np.isfinite(logits)):
            raise PhotoDetectorError("training diverged: the model outputs NaN or inf on validation images",
                                     "lower train.learning_rate or set train.grad_clip_norm")
        labels = self.val_split.labels
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


def run_train(data_dir: str | Path, out_dir: str | Path, cfg: Config, *, resume: bool = False,
              force: bool = False, on_epoch_end: Callable[[dict[str, float]], None] | None = None,
              on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
              environ: dict[str, str] | None = None, stage: Fetch | None = None) -> TrainResult:
    """Train on `data_dir/{train,val}` and write checkpoints, metrics.csv, model.onnx and model.json.

    `on_epoch_end(row)` is called after each epoch's checkpoints are on disk (pipelines log metrics with it);
    `on_checkpoint(info)` after each mid-epoch checkpoint (info: epoch, step). With train.gpus > 1 or
    train.nodes > 1 it runs in one process per GPU (see photo_detector.parallel) and they are called in the
    first, so they must be picklable (module-level functions). With train.nodes > 1 the machine's place in
    the job comes from `environ` (os.environ by default: Vertex's CLUSTER_SPEC, see parallel.rendezvous);
    only the first machine writes `out_dir`, and the others return a TrainResult without metrics.
    `stage` fetches the packed folder's files whole when it is on Cloud Storage (cloud.gcs.staging_source):
    streamed training shards are then staged to local disk within train.stage_mb (data.staging).
    """
    start = time.perf_counter()
    data_dir, out = Path(data_dir), Path(out_dir)
    node = rendezvous(cfg.train.nodes, environ)
    ckpt = None
    if resume:
        ckpt = resume_checkpoint(out / LAST, cfg)
        cfg = from_dict(ckpt["config"])
    world = cfg.train.gpus * node.nodes
    if world > 1:
        device = select_device(cfg.train.device)
        check_world(cfg.train.gpus, device, cfg.data.batch_size, nodes=node.nodes)
    if node.rank == 0:
        prepare_output_dir(out, force=force, resume=resume)
    args = (data_dir, out, cfg, resume, on_epoch_end, on_checkpoint, stage)
    if world == 1:
        result = _train(*args, Shard(), ckpt=ckpt)
    else:  # each process reads the checkpoint itself (no copy of it through the launcher)
        result = launch(_train, args, cfg.train.gpus, "nccl" if device.type == "cuda" else "gloo", node=node)
        if result is None:  # a machine other than the first: rank 0's result is on the first
            result = TrainResult(out, 0, float("nan"), {}, 0, 0.0, [], "epochs", main=False)
    result.seconds = time.perf_counter() - start
    return result


def _train(data_dir: Path, out: Path, cfg: Config, resume: bool,
           on_epoch_end: Callable[[dict[str, float]], None] | None,
           on_checkpoint: Callable[[dict[str, Any]], None] | None, stage: Fetch | None, shard: Shard,
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
    trainer = _Trainer(cfg, data_dir, shard, stage)
    trainer.build(load_pretrained=ckpt is None and cfg.model.pretrained)
    if shard.main:
        write_text_atomic(out / CONFIG, cfg.to_yaml())

    # Every process holds the same generator states (draws cover the global batch), so rank 0's are all.
    gens = {"augment": trainer.aug_gen, "jpeg": trainer.jpeg_gen, "dropout": trainer.dropout_gen}
    history: list[dict[str, float]] = []
    best: float | None = None
    best_epoch, bad_epochs, first_epoch, earlier_seconds = 0, 0, 1, 0.0
    start_step, sums = 0, (0.0, 0.0, 0.0)
    if ckpt is not None:
        trainer.load_state(ckpt)
        set_rng_state(ckpt["rng"], gens)
        history, best, best_epoch, bad_epochs = (ckpt["history"], ckpt["best_metric"], ckpt["best_epoch"],
                                                 ckpt["bad_epochs"])
        first_epoch = ckpt["epoch"] + 1
        earlier_seconds = float(ckpt.get("train_seconds", 0.0))  # the budget counts every attempt
        mid = ckpt.get("mid_epoch")
        if mid:  # rank 0 carries the sums of every rank's steps so far; the others start from zero
            start_step = int(mid["step"])
            sums = tuple(mid["sums"]) if shard.main else (0.0, 0.0, 0.0)  # type: ignore[assignment]
        log.info("resuming %s after epoch %d%s (best %s %.4f at epoch %d)", out, ckpt["epoch"],
                 f", step {start_step} of epoch {first_epoch}" if start_step else "",
                 cfg.train.checkpoint_monitor, best or float("nan"), best_epoch)

    monitor, mode, patience = cfg.train.checkpoint_monitor, cfg.train.checkpoint_mode, \
        cfg.train.early_stopping_patience
    # Why training stopped: early stopping (also when resuming a run that had), the budget, or None until the
    # loop runs out of epochs.
    stopped_by: str | None = "early_stopping" if bad_epochs >= patience > 0 else None
    epoch = first_epoch - 1
    loop_start = time.perf_counter()

    def spent() -> float:
        return earlier_seconds + time.perf_counter() - loop_start

    def common(epoch_done: int) -> dict[str, Any]:
        best_row = next((r for r in history if r["epoch"] == best_epoch), {"val_accuracy": float("nan")})
        return {**trainer.state(epoch_done), "best_val_accuracy": best_row["val_accuracy"], "history": history,
                "best_metric": best, "best_epoch": best_epoch, "bad_epochs": bad_epochs, "rng": rng_state(gens),
                "train_seconds": spent()}

    def save_mid_epoch(step: int, global_sums: list[float]) -> None:
        if shard.main:
            save_checkpoint(last_path, {**common(epoch - 1),
                                        "mid_epoch": {"epoch": epoch, "step": step, "sums": global_sums}})
            log.info("checkpoint: epoch %d, step %d of %d", epoch, step, trainer.steps_per_epoch)
            if on_checkpoint is not None:
                on_checkpoint({"epoch": epoch, "step": step})

    minutes = cfg.train.checkpoint_every_minutes
    mid_epoch = MidEpoch(minutes, shard, save_mid_epoch) if minutes > 0 else None
    # Closed however the loop ends, a diverged run included; only rank 0 writes logs and checkpoints.
    with EpochLog(out / LOGS) if shard.main else contextlib.nullcontext() as tb:
        while stopped_by is None and epoch < cfg.train.epochs:
            if shard.agree(budget_reached(spent(), history, cfg.train.max_minutes)):
                stopped_by = "budget"
                log.info("time budget: %.1f of train.max_minutes=%g min spent; the next epoch would overrun it, so "
                         "training stops after epoch %d", spent() / 60, cfg.train.max_minutes, epoch)
                break
            epoch += 1
            t0 = time.perf_counter()
            if trainer.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(trainer.device)
            row: dict[str, Any] = {"epoch": epoch, **trainer.train_epoch(epoch, start_step, sums, mid_epoch)}
            steps_run, start_step, sums = trainer.steps_per_epoch - start_step, 0, (0.0, 0.0, 0.0)
            row["images_per_second"] = steps_run * trainer.batch_size / (time.perf_counter() - t0)
            row.update({**trainer.validate(), "learning_rate": trainer.optimizer.param_groups[0]["lr"]})
            if trainer.device.type == "cuda":
                row["gpu_peak_memory_mib"] = torch.cuda.max_memory_allocated(trainer.device) / 2**20
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            better = improved(row[monitor], best, mode)  # the same on every rank: gathered validation
            if better:
                best, best_epoch, bad_epochs = row[monitor], epoch, 0
            else:
                bad_epochs += 1
            if bad_epochs >= patience > 0:
                stopped_by = "early_stopping"
            if mid_epoch is not None:
                mid_epoch.epoch_saved()
            if not shard.main:
                continue
            state = trainer.state(epoch)
            if better:
                save_checkpoint(out / BEST, {**state, "val_accuracy": row["val_accuracy"],
                                             "best_val_accuracy": row["val_accuracy"], "metrics": row})
            save_checkpoint(last_path, {**common(epoch), "val_accuracy": row["val_accuracy"]})
            write_history(out / HISTORY, history)
            tb.epoch(row)
            log.info("epoch %d/%d  train_loss %.4f acc %.4f | val_loss %.4f acc %.4f f1 %.4f | lr %.2e | %.1fs%s",
                     epoch, cfg.train.epochs, row["train_loss"], row["train_accuracy"], row["val_loss"],
                     row["val_accuracy"], row["val_f1"], row["learning_rate"], row["seconds"],
                     "  *best*" if best_epoch == epoch else "")
            if on_epoch_end is not None:
                on_epoch_end(row)
    trainer.close()
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
    images, labels = Rows(trainer.val_split), trainer.val_split.labels  # read as export needs, never whole
    export_model_folder(model, out, cfg, trainer.pp, images, labels,
                        checkpoint_file=BEST, best_epoch=best_ckpt["epoch"],
                        val_metrics={k: v for k, v in best_row.items() if k.startswith("val_")},
                        train_images=len(trainer.train_split), val_images=len(trainer.val_split),
                        data_digest=trainer.data_digest,
                        training={"epochs_run": epoch, "stopped_by": stopped_by,
                                  "max_minutes": cfg.train.max_minutes, "logs": LOGS})
    seconds = time.perf_counter() - start
    log.info("best epoch %d: val_accuracy %.4f; wrote %s in %.1fs", best_ckpt["epoch"],
             best_row["val_accuracy"], out, seconds)
    return TrainResult(out, best_ckpt["epoch"], best_row["val_accuracy"], dict(best_row), epoch, seconds, history,
                       stopped_by)
