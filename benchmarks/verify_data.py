"""verify-data throughput and memory: the sample data, then CIFAKE-shaped folders of 32x32 JPEGs
(generated here) of 2k, 20k and 120k images (CIFAKE's own size).

Targets: images per second on 2 cores using both cores; memory flat as the dataset grows (peak RSS of the
verifying process and its workers). Each run is a fresh process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

CHILD = """
import json, sys, time
from photo_detector.config import load_config
from photo_detector.verify import run_verify
cfg = load_config(None, {"verify.min_images_per_class": 1, "data.image_size": int(sys.argv[3])})
r = run_verify(sys.argv[1], sys.argv[2], cfg)
print(json.dumps({"images": r.n_images, "seconds": r.seconds, "errors": len(r.errors)}))
"""


def measure(data: Path, out: Path, image_size: int) -> dict:
    """Run verify in a child process; sample the RSS of it and its workers every 20 ms."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(data), str(out), str(image_size)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak, cpu = 0, 0.0
    t0 = time.perf_counter()
    while proc.poll() is None:
        try:
            procs = [ps, *ps.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs))
            cpu = max(cpu, sum(sum(p.cpu_times()[:2]) for p in procs))
        except psutil.Error:
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"verify failed on {data}:\n{err[-2000:]}")
    result = json.loads(out)
    return {**result, "peak_rss_mib": peak / 2**20, "wall_s": wall, "cpu_s": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="2000,20000,120000", help="image counts of the 32x32 JPEG folders")
    args = ap.parse_args()
    from photo_detector.data.sample import generate_sample

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sample = generate_sample(tmp_path / "sample", per_class=800, size=72).root
        rows.append(("sample data (1,600 x 72 px PNG)", measure(sample, tmp_path / "v-sample", 64)))
        for n in (int(x) for x in args.sizes.split(",")):
            t = time.perf_counter()
            folder = generate_sample(tmp_path / f"jpeg32-{n}", per_class=n // 2, size=32, fmt="jpeg").root
            print(f"generated {n} 32x32 JPEGs in {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
            rows.append((f"{n:,} x 32 px JPEG", measure(folder, tmp_path / f"v-{n}", 32)))
            shutil.rmtree(folder)
    cores = psutil.cpu_count()
    print(f"verify-data on {cores} cores")
    for name, r in rows:
        print(f"  {name:<32} {r['images'] / r['seconds']:8.0f} img/s   peak RSS {r['peak_rss_mib']:6.0f} MiB   "
              f"CPU/wall {r['cpu_s'] / r['wall_s']:.2f} cores   ({r['images']} images, {r['errors']} errors)")
    first, big = rows[1][1], rows[-1][1]
    growth = big["peak_rss_mib"] / first["peak_rss_mib"]
    print(f"  memory growth {first['images']} -> {big['images']} images: {growth:.2f}x "
          f"(data grew {big['images'] / first['images']:.0f}x)")


if __name__ == "__main__":
    main()
