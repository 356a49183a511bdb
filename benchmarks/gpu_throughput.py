"""GPU training throughput at 224 px for a full fine-tune with AMP (fp16) and channels_last, including the
batched augmentation, vs fp32 NCHW on the same GPU. Goal: >= 4,000 img/s on an H100. Needs CUDA.

With several GPUs visible it also reports the multi-GPU path (`train.gpus`): one DDP process per GPU with
global BatchNorm, the global batch split evenly, img/s of the whole group for 1 and N processes and the
scaling efficiency. `--device cpu --gpus 2` runs that path with gloo on the CPU (tiny sizes), to check the
script where there is no GPU.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

from photo_detector.config import load_config
from photo_detector.data.augment import BatchAugment, uint8_nchw
from photo_detector.model import build_model
from photo_detector.parallel import Shard, data_parallel, launch
from photo_detector.preprocess import Preprocess
from photo_detector.train import make_optimizer


def run(amp: bool, channels_last: bool, batch: int, steps: int) -> float:
    cfg = load_config(None, {"model.pretrained": False, "data.batch_size": batch})
    dev = torch.device("cuda")
    model = build_model(cfg.model, load_pretrained=False).to(dev).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(list(model.parameters()), cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    pp = Preprocess(256, 256, 224)
    aug = BatchAugment(cfg.augmentation, pp, torch.Generator(device=dev).manual_seed(0))
    store = uint8_nchw(torch.randint(0, 256, (batch * 4, 256, 256, 3), dtype=torch.uint8, device=dev))
    y = torch.randint(0, 2, (batch,), device=dev).float()
    loss_fn = nn.BCEWithLogitsLoss()

    def step(i: int) -> None:
        x = aug(store, channels_last=channels_last, index=torch.arange((i % 4) * batch, (i % 4 + 1) * batch))
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()

    for i in range(5):
        step(i)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(steps):
        step(i)
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t)


def ddp_rate(batch: int, steps: int, size: int, device_type: str, shard: Shard) -> float:
    """img/s of the whole group: each of `shard.world` processes trains its slice of a global `batch`, as
    train.py does (global BatchNorm, DDP gradient averaging, augmentation drawn for the global batch)."""
    cfg = load_config(None, {"model.pretrained": False, "data.batch_size": batch})
    dev = torch.device(device_type, shard.rank) if device_type == "cuda" else torch.device("cpu")
    model = build_model(cfg.model, load_pretrained=False).to(dev).train().to(memory_format=torch.channels_last)
    net = data_parallel(model, dev, shard)
    amp = dev.type == "cuda"
    opt = make_optimizer(list(model.parameters()), cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    resize = round(size / 0.875)
    aug = BatchAugment(cfg.augmentation, Preprocess(resize, resize, size), torch.Generator(device=dev).manual_seed(0))
    rows = shard.rows(batch)
    store = uint8_nchw(torch.randint(0, 256, (batch * 2, resize, resize, 3), dtype=torch.uint8, device=dev))
    y = torch.randint(0, 2, (batch,), device=dev).float()[rows]
    loss_fn = nn.BCEWithLogitsLoss()

    def step(i: int) -> None:
        index = torch.arange((i % 2) * batch, (i % 2 + 1) * batch)[rows]
        x = aug(store, channels_last=True, index=index, draw=aug.draw(batch)[rows])
        with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
            loss = loss_fn(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for i in range(3):
        step(i)
    sync()
    t = time.perf_counter()
    for i in range(steps):
        step(i)
    sync()
    return steps * batch / (time.perf_counter() - t)


def scaling(gpus: int, batch_per_gpu: int, steps: int, size: int, device_type: str) -> None:
    """1 process vs `gpus` processes, each with `batch_per_gpu` rows (weak scaling: the global batch grows)."""
    backend = "nccl" if device_type == "cuda" else "gloo"
    one = ddp_rate(batch_per_gpu, steps, size, device_type, Shard())
    many = launch(ddp_rate, (batch_per_gpu * gpus, steps, size, device_type), gpus, backend)
    amp = ", AMP fp16" if backend == "nccl" else ""
    print(f"multi-GPU path ({backend}, {size}px, {batch_per_gpu} per process{amp}):")
    print(f"  1 process : {one:8.1f} img/s")
    print(f"  {gpus} processes: {many:8.1f} img/s  ({many / one:.2f}x, scaling efficiency {many / one / gpus:.0%})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--gpus", type=int, help="processes for the multi-GPU figures (default: every visible GPU)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cpu: only the multi-process path, with gloo at 64 px (a check of the script, not a figure)")
    args = ap.parse_args()
    if args.device == "cpu":
        scaling(args.gpus or 2, batch_per_gpu=8, steps=3, size=64, device_type="cpu")
        return
    if not torch.cuda.is_available():
        print("gpu_throughput: no CUDA device visible; run it on a GPU machine (or --device cpu to check the "
              "multi-process path)", file=sys.stderr)
        sys.exit(2)
    base = run(False, False, args.batch, args.steps)
    ours = run(True, True, args.batch, args.steps)
    print(f"{torch.cuda.get_device_name()}: 224px full fine-tune, batch {args.batch}")
    print(f"  fp32 NCHW: {base:8.1f} img/s\n  AMP fp16 + channels_last: {ours:8.1f} img/s (goal >= 4000)")
    print(f"  ratio: {ours / base:.2f}x")
    gpus = args.gpus or torch.cuda.device_count()
    if gpus > 1:
        scaling(gpus, batch_per_gpu=args.batch, steps=args.steps, size=224, device_type="cuda")
    else:
        print("one GPU visible: no multi-GPU figures (they need 2 or more)")


if __name__ == "__main__":
    main()
