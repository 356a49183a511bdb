"""GPU training throughput at 224 px for a full fine-tune with AMP (fp16) and channels_last, including the
batched augmentation, vs fp32 NCHW on the same GPU. Goal: >= 4,000 img/s on an H100. Needs CUDA.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_throughput: no CUDA device visible; run it on a GPU machine", file=sys.stderr)
        sys.exit(2)
    base = run(False, False, args.batch, args.steps)
    ours = run(True, True, args.batch, args.steps)
    print(f"{torch.cuda.get_device_name()}: 224px full fine-tune, batch {args.batch}")
    print(f"  fp32 NCHW: {base:8.1f} img/s\n  AMP fp16 + channels_last: {ours:8.1f} img/s (goal >= 4000)")
    print(f"  ratio: {ours / base:.2f}x")


if __name__ == "__main__":
    main()
