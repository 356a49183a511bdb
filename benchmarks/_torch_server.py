"""Baseline for benchmarks/serve.py: the same endpoint, same decoding and preprocessing, but the model runs
in eager PyTorch (what serving the checkpoint directly would be). Not part of the product."""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from photo_detector.artifacts import read_record
from photo_detector.config import from_dict
from photo_detector.model import build_model
from photo_detector.preprocess import decode_square, open_image, to_model_input
from photo_detector.serving.multipart import file_parts


def main(model_dir: str, port: int) -> None:
    record = read_record(model_dir)
    cfg = from_dict(record.config)
    model = build_model(cfg.model, load_pretrained=False).eval()
    model.load_state_dict(torch.load(f"{model_dir}/best.pt", weights_only=False)["model_state_dict"])
    pp = record.preprocess

    async def predict(request: Request) -> JSONResponse:
        data = file_parts(await request.body(), request.headers["content-type"], "file", 4)[0]
        img = open_image(data, max_pixels=40_000_000, draft_size=pp.store_size)
        x = torch.from_numpy(to_model_input([decode_square(img, pp.store_size)], pp))
        t0 = time.perf_counter()
        with torch.inference_mode():
            p = float(torch.sigmoid(model(x))[0])
        return JSONResponse({"probability": p, "inference_time_ms": (time.perf_counter() - t0) * 1000})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    with torch.inference_mode():
        model(torch.from_numpy(np.zeros((1, 3, pp.crop_size, pp.crop_size), np.float32)))
    app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", health)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
