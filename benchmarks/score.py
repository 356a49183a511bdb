"""`photo-detector score` against a loop of single /predict calls, on the same images, same model, same run.

The baseline is what a user without a batch path does: a keep-alive client posting one image at a time to
a local `photo-detector serve` (each image decoded, sent, decoded again, scored alone). `score` reads and
decodes in threads and scores in batches, in one process. Reported: images/s for both and the ratio.
The model is the serve benchmark's (EfficientNet-B0 at 224 px, random weights, exported as training does).
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serve import free_port, make_input, start  # noqa: E402


def predict_loop(port: int, files: list[Path], key: str) -> float:
    boundary = "scoreboundary"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    start_t = time.perf_counter()
    for f in files:
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{f.name}\"\r\n"
                f"Content-Type: image/jpeg\r\n\r\n").encode() + f.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        conn.request("POST", "/predict", body=body, headers={
            "X-API-Key": key, "Content-Type": f"multipart/form-data; boundary={boundary}"})
        r = conn.getresponse()
        r.read()
        assert r.status == 200
    conn.close()
    return time.perf_counter() - start_t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--model-dir", type=Path, help="a folder made by benchmarks/serve.py --make-model")
    args = ap.parse_args()
    from photo_detector.scoring import score
    from photo_detector.serving.auth import hash_key

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or Path(tmp) / "model"
        if not args.model_dir:
            subprocess.run([sys.executable, str(HERE / "serve.py"), "--make-model", str(model_dir)], check=True)
        catalog = Path(tmp) / "catalog"
        catalog.mkdir()
        sizes = [(224, 224), (640, 480), (1024, 768)]
        for i in range(args.images):
            w, h = sizes[i % len(sizes)]
            (catalog / f"{i:05d}.jpg").write_bytes(make_input(w + i % 7, h, "JPEG", 90))
        files = sorted(catalog.iterdir())

        t = time.perf_counter()
        res = score(model_dir, str(catalog), Path(tmp) / "scores.csv")
        ours = time.perf_counter() - t
        assert res.scored == len(files)

        port, key = free_port(), "bench"
        env = {**os.environ, "PHOTO_DETECTOR_API_KEY_HASHES": hash_key(key)}
        proc, _ = start([sys.executable, "-m", "photo_detector", "serve", "--model", str(model_dir), "--port",
                         str(port), "--host", "127.0.0.1"], port, files[0].read_bytes(), {"X-API-Key": key}, env)
        try:
            loop = predict_loop(port, files, key)
        finally:
            proc.terminate()
            proc.wait()
    n = len(files)
    print(f"{n} JPEGs (224 px to 1024x768), {len(os.sched_getaffinity(0))} cores")
    print(f"  score (one process, batches of 16):  {n / ours:7.1f} img/s  ({ours:.1f} s)")
    print(f"  loop of single /predict calls:        {n / loop:7.1f} img/s  ({loop:.1f} s)")
    print(f"  score / loop: {loop / ours:.2f}x")


if __name__ == "__main__":
    main()
