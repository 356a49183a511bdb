"""CPU train step at the sample profile's size: ours as the trainer runs (channels_last, the precision
train.precision=auto picks, fused AdamW) vs fp32 eager NCHW with the default AdamW. Target: >= 1.3x img/s.
Also reports bf16 autocast to show why auto does not pick it here.
"""

from __future__ import annotations

import argparse

import torch
from _common import best_of
from torch import nn

from photo_detector.config import load_config
from photo_detector.model import build_model
from photo_detector.train import make_optimizer, select_precision


def bench(cfg, channels_last: bool, dtype: torch.dtype | None, steps: int, repeats: int, fused: bool) -> float:
    torch.manual_seed(0)
    model = build_model(cfg.model, load_pretrained=False).train()
    bs, size = cfg.data.batch_size, cfg.data.image_size
    x = torch.randn(bs, 3, size, size)
    y = torch.randint(0, 2, (bs,)).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = make_optimizer(list(model.parameters()), cfg, fused=fused)
    loss_fn = nn.BCEWithLogitsLoss()

    def run() -> int:
        for _ in range(steps):
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = loss_fn(model(x).float(), y)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        return steps * bs

    run()  # warm-up
    return best_of(run, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = load_config("sample")
    ours_dtype = select_precision(cfg.train.precision, torch.device("cpu"))
    base = bench(cfg, False, None, args.steps, args.repeats, fused=False)
    ours = bench(cfg, cfg.train.channels_last, ours_dtype, args.steps, args.repeats, fused=True)
    bf16 = bench(cfg, True, torch.bfloat16, args.steps, args.repeats, fused=True)
    print(f"train step, {cfg.model.name} at {cfg.data.image_size}px, batch {cfg.data.batch_size}, "
          f"{torch.get_num_threads()} threads")
    print(f"  baseline fp32 eager NCHW, default AdamW:  {base:7.1f} img/s")
    print(f"  ours (channels_last, fused AdamW, {ours_dtype or 'fp32'}): {ours:7.1f} img/s")
    print(f"  channels_last + bf16 autocast:            {bf16:7.1f} img/s")
    print(f"  ratio ours/baseline: {ours / base:.2f}x (target >= 1.3x)")


if __name__ == "__main__":
    main()
