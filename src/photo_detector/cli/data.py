"""`data sample|upload|download|cifake` and `verify-data`: datasets, local and in Cloud Storage."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

from photo_detector.cli.common import add_config_args, config_from
from photo_detector.errors import DataError
from photo_detector.io import prepare_output_dir


def cmd_data_sample(args: argparse.Namespace) -> int:
    from photo_detector.data.sample import generate_sample

    quality = (args.jpeg_quality, args.fake_jpeg_quality or args.jpeg_quality)
    res = generate_sample(args.out, per_class=args.per_class, size=args.size, seed=args.seed, force=args.force,
                          fmt=args.format, quality=quality, leak=args.leak)
    total = sum(sum(c.values()) for c in res.counts.values())
    counts = ", ".join(f"{s} {c['real']}+{c['ai_generated']}" for s, c in res.counts.items())
    print(f"wrote {total} images ({counts}; real+ai_generated) of {args.size}px to {res.root} "
          f"in {res.seconds:.1f}s")
    return 0


def cmd_data_upload(args: argparse.Namespace) -> int:
    from photo_detector.cloud.gcs import upload_folder

    res = upload_folder(args.local, args.uri, workers=args.workers)
    print(f"uploaded {len(res.copied)} files ({res.bytes_copied / 1e6:.1f} MB), {len(res.skipped)} unchanged, "
          f"to {args.uri}")
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    from photo_detector.cloud.gcs import download_prefix

    res = download_prefix(args.uri, args.local, workers=args.workers)
    print(f"downloaded {len(res.copied)} files ({res.bytes_copied / 1e6:.1f} MB), {len(res.skipped)} unchanged, "
          f"to {args.local}")
    return 0


def cmd_data_cifake(args: argparse.Namespace) -> int:
    from photo_detector.data.cifake import prepare_cifake

    res = prepare_cifake(args.out, source=args.source, hf_id=args.hf, val_fraction=args.val_fraction,
                         force=args.force)
    counts = ", ".join(f"{s} {c['real']}+{c['ai_generated']}" for s, c in res.counts.items())
    print(f"wrote CIFAKE to {res.root} ({counts}; real+ai_generated) from {res.source}")
    return 0


def cmd_verify_data(args: argparse.Namespace) -> int:
    import tempfile

    from photo_detector.verify import run_verify

    cfg = config_from(args, {"data.image_size": args.image_size})
    with contextlib.ExitStack() as stack:
        out = args.out or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="verify-")))
        if args.out is not None:
            prepare_output_dir(args.out, force=args.force)
        try:
            res = run_verify(args.data, out, cfg)
            failed = None
        except DataError as exc:
            failed = exc
            report = json.loads((out / "verify_report.json").read_text()) if (out / "verify_report.json").exists() \
                else None
            if report is None:
                raise
        if args.json:
            print(json.dumps(report if failed else res.to_dict(), indent=2))
        elif failed:
            print((out / "verify_report.md").read_text(), end="")
        else:
            print(res.markdown(), end="")
    if failed:
        return 2
    return 1 if args.strict and res.warnings else 0


def add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="datasets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = dsub.add_parser("sample", help="write the offline, deterministic sample dataset")
    p.add_argument("out", type=Path, help="folder to create (train|val|test/{real,ai_generated})")
    p.add_argument("--per-class", type=int, default=800, help="images per class over all splits (70/15/15)")
    p.add_argument("--size", type=int, default=72, help="image side in pixels")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--force", action="store_true", help="replace an existing non-empty folder")
    p.add_argument("--format", choices=["png", "jpeg"], default="png", help="file format of both classes")
    p.add_argument("--jpeg-quality", type=int, default=95, help="with --format jpeg: the quality of real images")
    p.add_argument("--fake-jpeg-quality", type=int, help="... of ai_generated images (default: the same; "
                                                         "different qualities make a format shortcut)")
    p.add_argument("--leak", type=float, default=0.0, help="share of test/real images that are near-duplicates "
                                                           "of train/real images (CIFAR-10's test set: 0.033)")
    p.set_defaults(func=cmd_data_sample)

    p = dsub.add_parser("upload", help="copy a local folder to gs:// (parallel, checksum-verified, resumable)")
    p.add_argument("local", type=Path)
    p.add_argument("uri", help="gs://BUCKET/PATH")
    p.add_argument("--workers", type=int, default=8)
    p.set_defaults(func=cmd_data_upload)
    p = dsub.add_parser("download", help="copy gs://... to a local folder (skips unchanged files)")
    p.add_argument("uri", help="gs://BUCKET/PATH")
    p.add_argument("local", type=Path)
    p.add_argument("--workers", type=int, default=8)
    p.set_defaults(func=cmd_data_download)
    p = dsub.add_parser("cifake", help="download CIFAKE and lay it out as train|val|test/{real,ai_generated}")
    p.add_argument("out", type=Path)
    p.add_argument("--source", help="a CIFAKE folder already downloaded (train|test/{REAL,FAKE}); default: "
                                    "download from Hugging Face")
    p.add_argument("--hf", metavar="ID", help="the Hugging Face copy to download (default "
                                              "dragonintelligence/CIFAKE-image-dataset; the README lists others)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of train moved to val (by file hash)")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty folder")
    p.set_defaults(func=cmd_data_cifake)


def add_verify_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify-data", help="check a dataset folder and pack it for training (the first stage)")
    add_config_args(p)
    p.add_argument("data", type=Path, help="dataset folder with train|val|test/{real,ai_generated}")
    p.add_argument("--out", type=Path, help="write the packed dataset and reports here (default: a temp folder)")
    p.add_argument("--image-size", type=int, help="data.image_size (decides the packed size)")
    p.add_argument("--json", action="store_true", help="print the JSON report")
    p.add_argument("--strict", action="store_true", help="exit 1 when there are warnings")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty --out")
    p.set_defaults(func=cmd_verify_data)


PARSERS = {"data": add_data, "verify-data": add_verify_data}
