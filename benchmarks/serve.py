"""The prediction service on loopback: latency on small and large photos, cold start, throughput, memory.

Inputs: a 224 px JPEG, a 1024² JPEG, a 1600x1067 JPEG at quality 90, a 4032x3024 phone photo, a 1024² PNG.
For each, in one run: /predict p50/p99 (keep-alive client, body encoded once), the raw ONNX Runtime time of
the model, and the decode time of that file (what the service does to get pixels: sniff, open, JPEG draft
scale, full decode), both in a separate process. The physical floor is model +
decode; overhead = p50 - raw - decode, target <= 1.2 ms at every size with p99 <= 2x p50.
"paired" subtracts, request by request, the model and decode times the server measured for that very request
(its Server-Timing header) instead of the separate process's: on a shared machine the two drift apart by
more than the target. The breakdown splits the paired overhead into the server's resize to the model's
crop and normalisation, the wire (the same body sent by the same client to a bare blocking socket server
with one receive buffer: loopback and client cost, which no server code can save) and the request path
(HTTP parsing, routing, body read and multipart beyond the wire, thread hand-offs, JSON): what is left.
Also (issue #5): eager torch serving the same model at 224 px, cold start, concurrency 8, memory.
And `POST /v1/explain` (the occlusion map: grid² + 1 images, max_batch_files per ONNX call) on the 1600x1067 photo: its
p50 and the ratio to /predict's p50 on the same photo, same server, same run (`--explain-only` measures just
these two).
The model has random weights (latency does not depend on them), exported like training exports it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from PIL import Image

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(folder: Path) -> Path:
    """An EfficientNet-B0 + head at 224, saved and exported as a training run saves it."""
    import torch

    from photo_detector import CLASS_NAMES
    from photo_detector.artifacts import ModelRecord, write_record
    from photo_detector.config import load_config
    from photo_detector.export import export_onnx
    from photo_detector.model import build_model
    from photo_detector.preprocess import Preprocess

    cfg = load_config(None, {"model.pretrained": False})
    torch.manual_seed(0)
    model = build_model(cfg.model, load_pretrained=False).eval()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": model.state_dict()}, folder / "best.pt")
    pp = Preprocess(cfg.data.resize_size, cfg.data.resize_size, cfg.data.image_size, tuple(cfg.data.mean),
                    tuple(cfg.data.std))
    inputs = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
    export_onnx(model, inputs, folder / "model.onnx", opset=cfg.export.opset, tolerance=1e-3)
    write_record(folder, ModelRecord(model_file="model.onnx", framework="onnx", image_size=224, preprocess=pp,
                                     thresholds=dict(cfg.thresholds.__dict__), model_name=cfg.model.name,
                                     class_names=tuple(CLASS_NAMES), config=cfg.to_dict()))
    return folder


INPUTS = {  # name: (width, height, format, JPEG quality)
    "224 px JPEG": (224, 224, "JPEG", 90),
    "1024² JPEG": (1024, 1024, "JPEG", 90),
    "1600x1067 JPEG q90": (1600, 1067, "JPEG", 90),
    "4032x3024 phone JPEG": (4032, 3024, "JPEG", 92),
    "1024² PNG": (1024, 1024, "PNG", None),
}


def make_input(width: int, height: int, fmt: str, quality: int | None) -> bytes:
    """A deterministic photograph-like image (the sample generator's real-photo texture) at that size."""
    from photo_detector.data.sample import make_real

    img = Image.fromarray(make_real(np.random.default_rng(1), max(width, height))).resize((width, height))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": quality} if quality else {}))
    return buf.getvalue()


def jpeg_224() -> bytes:
    return make_input(*INPUTS["224 px JPEG"])


def median_ms(fn: Any, n: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def floor_parts(model_dir: Path, data: bytes, n: int) -> dict[str, float]:
    """In a torch-free process that loads the model as the service does: the model (raw ORT) and the decode
    of this file."""
    from photo_detector.inference import LoadedModel
    from photo_detector.preprocess import decode_crop, normalise, open_image

    model = LoadedModel.load(model_dir)
    pp = model.preprocess
    x = normalise([decode_crop(open_image(data, max_pixels=40_000_000, draft_size=pp.store_size), pp)], pp)
    return {"raw": median_ms(lambda: model.probabilities(x), n),
            "decode": median_ms(lambda: open_image(data, max_pixels=40_000_000, draft_size=pp.store_size), n)}


def start(cmd: list[str], port: int, data: bytes, headers: dict[str, str],
          env: dict[str, str] | None = None) -> tuple[subprocess.Popen, float]:
    """Start a server; return it and the seconds from process start to the first successful /predict."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}/predict"
    with httpx.Client(timeout=5) as client:
        while True:
            try:
                if client.post(url, files={"file": ("x.jpg", data)}, headers=headers).status_code == 200:
                    return proc, time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {' '.join(cmd)}")
            time.sleep(0.005)


def latencies(port: int, data: bytes, headers: dict[str, str], n: int, route: str = "/predict",
              warm: int = 5) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Sequential /predict latencies, the server-reported model times and Server-Timing phases (ms), with a
    lean client: the multipart body is encoded once, so the numbers are the server's, not the Python
    client's encoding."""
    import http.client

    from photo_detector.serving.timing import parse_server_timing

    boundary = "benchboundary7d1f"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    hdrs = {**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out, model_ms, phases = [], [], []
    for i in range(n + warm):
        t = time.perf_counter()
        conn.request("POST", route, body=body, headers=hdrs)
        r = conn.getresponse()
        payload = r.read()
        assert r.status == 200, payload
        if i >= warm:
            out.append((time.perf_counter() - t) * 1000)
            model_ms.append(json.loads(payload).get("inference_time_ms", 0.0))
            phases.append(parse_server_timing(r.getheader("server-timing") or ""))
    conn.close()
    return np.asarray(out), np.asarray(model_ms), {k: np.asarray([p.get(k, 0.0) for p in phases])
                                                   for k in (phases[0] if phases else {})}


SINK = """
import socket, sys

# Blocking reads into one buffer allocated once: the least any server can spend to take a body off loopback.
srv = socket.create_server(("127.0.0.1", int(sys.argv[1])))
buf = memoryview(bytearray(64 << 20))
while True:
    conn, _ = srv.accept()
    pending = b""
    while True:
        while b"\\r\\n\\r\\n" not in pending:
            chunk = conn.recv(65536)
            if not chunk:
                break
            pending += chunk
        if b"\\r\\n\\r\\n" not in pending:  # the client closed its keep-alive connection
            break
        head, _, rest = pending.partition(b"\\r\\n\\r\\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\\r\\n")
                      if line.lower().startswith(b"content-length:"))
        got = min(len(rest), length)
        buf[:got] = rest[:got]
        pending = rest[length:]
        while got < length:
            got += conn.recv_into(buf[got:length])
        conn.sendall(b'HTTP/1.1 200 OK\\r\\ncontent-length: 27\\r\\n\\r\\n{"inference_time_ms": 0.0 }')
    conn.close()
"""


def transport_ms(data: bytes, n: int) -> list[float]:
    """p50 of moving each body to a bare blocking socket server and back (no HTTP framework, no parsing, no
    image work, one receive buffer), with the same client: what loopback and the client cost, which no server
    code can save."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.02)
        return [float(np.median(latencies(port, blob, {}, n)[0])) for blob in data]
    finally:
        proc.terminate()
        proc.wait()


async def concurrent(port: int, data: bytes, headers: dict[str, str], n: int, concurrency: int) -> tuple[float, int]:
    url = f"http://127.0.0.1:{port}/predict"
    errors = 0
    queue = list(range(n))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while queue:
            queue.pop()
            r = await client.post(url, files={"file": ("x.jpg", data)}, headers=headers)
            errors += r.status_code != 200

    t = time.perf_counter()
    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return n / (time.perf_counter() - t), errors


EXPLAIN_INPUT = "1600x1067 JPEG q90"


def explain_vs_predict(port: int, data: bytes, headers: dict[str, str], n: int) -> dict[str, float]:
    """/v1/explain and /predict on the same photo, alternating blocks so machine drift hits both alike."""
    explain_ms, predict_ms, batch_ms, model_ms = [], [], [], []
    for _ in range(3):
        lat, _, phases = latencies(port, data, headers, max(1, n // 3), "/v1/explain", warm=1)
        explain_ms += list(lat)
        batch_ms += list(phases["occluded_model"])
        lat, _, phases = latencies(port, data, headers, max(10, n), "/predict", warm=2)
        predict_ms += list(lat)
        model_ms += list(phases["model"])
    e50, p50 = float(np.median(explain_ms)), float(np.median(predict_ms))
    return {"explain_p50_ms": e50, "explain_p99_ms": float(np.percentile(explain_ms, 99)), "predict_p50_ms": p50,
            "explain_to_predict_p50": e50 / p50, "explain_batch_model_p50_ms": float(np.median(batch_ms)),
            "predict_model_p50_ms": float(np.median(model_ms)), "explain_requests": len(explain_ms)}


def print_explain(ex: dict[str, float], grid: int, chunk: int, rss: float) -> None:
    per_image = ex["explain_batch_model_p50_ms"] / (grid * grid + 1)
    print(f"/v1/explain ({grid}x{grid} grid = {grid * grid + 1} images, {chunk} per ONNX call) on the {EXPLAIN_INPUT}, "
          f"{len(os.sched_getaffinity(0))} cores, {ex['explain_requests']} requests")
    print(f"  p50 {ex['explain_p50_ms']:.1f} ms, p99 {ex['explain_p99_ms']:.1f} ms; /predict on the same photo "
          f"p50 {ex['predict_p50_ms']:.2f} ms; ratio {ex['explain_to_predict_p50']:.1f}x")
    print(f"  the batch's model time p50 {ex['explain_batch_model_p50_ms']:.1f} ms = {per_image:.2f} ms per image "
          f"vs {ex['predict_model_p50_ms']:.2f} ms for /predict's batch of 1; service RSS {rss:.0f} MiB after")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--model-dir", type=Path, help="use a folder made earlier by --make-model (e.g. on a machine "
                                                   "without the exporter's packages)")
    ap.add_argument("--make-model", type=Path, help="export the benchmark model and inputs into this folder, exit")
    ap.add_argument("--raw-onnx", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--explain-only", action="store_true",
                    help="measure only /v1/explain against /predict on the same photo (a few minutes less)")
    args = ap.parse_args()
    if args.make_model:
        make_model(args.make_model)
        for i, spec in enumerate(INPUTS.values()):
            (args.make_model / f"input{i}.bin").write_bytes(make_input(*spec))
        (args.make_model / "x.jpg").write_bytes(jpeg_224())
        return
    if args.raw_onnx:
        parts = [floor_parts(args.raw_onnx, (args.raw_onnx / f"input{i}.bin").read_bytes(), args.requests)
                 for i in range(len(INPUTS))]
        print(json.dumps(parts))
        return
    from photo_detector.serving.auth import hash_key

    key = "bench-key"
    headers = {"X-API-Key": key}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        # Each measurement in its own clean process: exporting needs torch, and torch's or scikit-learn's
        # thread pools in the measuring process would steal the 2 cores from the code under test.
        if args.model_dir:
            model_dir = args.model_dir
        else:
            subprocess.run([sys.executable, __file__, "--make-model", str(model_dir)], check=True)
        data = (model_dir / "x.jpg").read_bytes()
        inputs = [(model_dir / f"input{i}.bin").read_bytes() for i in range(len(INPUTS))]
        photo = inputs[list(INPUTS).index(EXPLAIN_INPUT)]
        from photo_detector.config import load_config

        serve_cfg = load_config(None, {}).serve
        grid, chunk = serve_cfg.explain_grid, serve_cfg.max_batch_files
        explain_n = max(9, args.requests // 10)
        floors = json.loads(subprocess.run([sys.executable, __file__, "--raw-onnx", str(model_dir), "--requests",
                                            str(min(args.requests, 60))], check=True, capture_output=True,
                                           text=True).stdout)
        raw = floors[0]["raw"]

        port = free_port()
        env = {**os.environ, "PHOTO_DETECTOR_API_KEY_HASHES": hash_key(key)}
        # A long time limit: on a loaded machine an explain is slow, and a slow number says more than a 503.
        cmd = [sys.executable, "-m", "photo_detector", "serve", "--model", str(model_dir), "--port", str(port),
               "--host", "127.0.0.1", "--set", "serve.request_timeout_seconds=300"]
        if args.explain_only:
            proc, _ = start(cmd, port, data, headers, env)
            try:
                ex = explain_vs_predict(port, photo, headers, explain_n)
                rss = psutil.Process(proc.pid).memory_info().rss / 2**20
            finally:
                proc.terminate()
                proc.wait()
            print_explain(ex, grid, chunk, rss)
            print(json.dumps({**ex, "explain_grid": grid, "explain_chunk": chunk, "rss_mib_after_explain": rss}))
            return
        transport = transport_ms(inputs, 60)  # type: ignore[arg-type]
        proc, cold = start(cmd, port, data, headers, env)
        try:
            ours, ours_model, _ = latencies(port, data, headers, args.requests)
            sized = [latencies(port, blob, headers, args.requests if i == 0 else max(40, args.requests // 3))
                     for i, blob in enumerate(inputs)]
            rps, errors = asyncio.run(concurrent(port, data, headers, args.requests, 8))
            rss = psutil.Process(proc.pid).memory_info().rss / 2**20
            ex = explain_vs_predict(port, photo, headers, explain_n)
            explain_rss = psutil.Process(proc.pid).memory_info().rss / 2**20
        finally:
            proc.terminate()
            proc.wait()

        tport = free_port()
        tproc, torch_cold = start([sys.executable, str(HERE / "_torch_server.py"), str(model_dir), str(tport)],
                                  tport, data, {})
        try:
            eager, eager_model, _ = latencies(tport, data, {}, max(50, args.requests // 2))
        finally:
            tproc.terminate()
            tproc.wait()

    p50, p99, t50 = float(np.median(ours)), float(np.percentile(ours, 99)), float(np.median(eager))
    m50, tm50 = float(np.median(ours_model)), float(np.median(eager_model))
    rest = p50 - m50  # decode, resize, HTTP: the same code in both servers
    result = {"raw_onnx_ms": raw, "p50_ms": p50, "p99_ms": p99, "eager_torch_p50_ms": t50,
              "cold_start_s": cold, "eager_torch_cold_start_s": torch_cold, "rps_at_8": rps, "errors_at_8": errors,
              "rss_mib": rss, "model_p50_ms": m50, "eager_torch_model_p50_ms": tm50}
    cores = len(os.sched_getaffinity(0))
    print(f"/predict by input size, loopback, {cores} cores (ms; overhead = p50 - raw ORT - decode)")
    print(f"  {'input':22s} {'MB':>5s} {'p50':>7s} {'p99':>7s} {'raw':>6s} {'decode':>7s} {'overhead':>9s} "
          f"{'paired':>7s} {'resize':>7s} {'norm':>5s} {'wire':>5s} {'path':>5s}  p99/p50")
    table = []
    for (name, _), blob, (lat, _, ph), fl, wire in zip(INPUTS.items(), inputs, sized, floors, transport,
                                                        strict=True):
        q50, q99 = float(np.median(lat)), float(np.percentile(lat, 99))
        over = q50 - fl["raw"] - fl["decode"]
        # Paired: each request minus the model and decode times the server measured for that very request,
        # so machine drift between the floor process and the server cancels out.
        paired = float(np.median(lat - ph["model"] - ph["decode"]))
        resize, norm, read = (float(np.median(ph[k])) for k in ("resize", "normalise", "read"))
        path_ms = paired - resize - norm - wire  # HTTP parsing, routing, body read beyond the wire, hand-offs, JSON
        table.append({"input": name, "p50_ms": q50, "p99_ms": q99, **fl, "wire": wire, "overhead_ms": over,
                      "paired_overhead_ms": paired, "resize": resize, "normalise": norm, "read": read,
                      "request_path_ms": path_ms})
        print(f"  {name:22s} {len(blob) / 1e6:5.2f} {q50:7.2f} {q99:7.2f} {fl['raw']:6.2f} {fl['decode']:7.2f} "
              f"{over:9.2f} {paired:7.2f} {resize:7.2f} {norm:5.2f} {wire:5.2f} {path_ms:5.2f}  {q99 / q50:5.2f}x")
    worst, worst_paired = max(t["overhead_ms"] for t in table), max(t["paired_overhead_ms"] for t in table)
    print(f"  worst overhead {worst:.2f} ms, paired {worst_paired:.2f} ms (target <= 1.2 ms); worst p99/p50 "
          f"{max(t['p99_ms'] / t['p50_ms'] for t in table):.2f}x (target <= 2x)")
    result["by_input"] = table
    print(f"/predict at 224 px on loopback, {len(os.sched_getaffinity(0))} cores, {args.requests} requests")
    print(f"  raw ONNX Runtime inference (batch 1):  p50 {raw:7.2f} ms")
    print(f"  our service:                           p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")
    print(f"  same endpoint, eager torch:            p50 {t50:7.2f} ms")
    print(f"  ratio p50 / raw ONNX:    {p50 / raw:5.2f}x (target <= 1.5x)")
    print(f"  ratio eager torch / ours: {t50 / p50:5.2f}x (target >= 3.5x)")
    print(f"  inside the servers: model {m50:.2f} ms (ORT) vs {tm50:.2f} ms (eager torch), engine ratio "
          f"{tm50 / m50:.2f}x; the rest of a request {rest:.2f} ms, so the endpoint ratio is at most "
          f"{(tm50 + rest) / (m50 + rest):.2f}x with this request path")
    print(f"  cold start to first /predict: {cold:.2f} s (target <= 1 s; eager torch server: {torch_cold:.2f} s)")
    print(f"  concurrency 8: {rps:.1f} req/s, {errors} errors; service RSS {rss:.0f} MiB")
    print_explain(ex, grid, chunk, explain_rss)
    result.update(ex, explain_grid=grid, explain_chunk=chunk, rss_mib_after_explain=explain_rss)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
