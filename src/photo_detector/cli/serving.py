"""`serve`, `api-key`, `score`, `batch-predict`: putting a model to work on images."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from photo_detector.cli.common import add_cloud_args, add_config_args, cloud_settings, config_from
from photo_detector.errors import PhotoDetectorError


def cmd_serve(args: argparse.Namespace) -> int:
    from photo_detector.serving.auth import KeyChecker, parse_hashes

    # On Vertex AI the model folder arrives as AIP_STORAGE_URI and the port as AIP_HTTP_PORT.
    source = args.model or os.environ.get("PHOTO_DETECTOR_MODEL_URI") or os.environ.get("AIP_STORAGE_URI")
    if not source:
        raise PhotoDetectorError("no model to serve", "pass --model DIR|gs://... or set PHOTO_DETECTOR_MODEL_URI")
    vertex = bool(os.environ.get("AIP_PREDICT_ROUTE"))
    hashes = parse_hashes(args.api_key_hashes or os.environ.get("PHOTO_DETECTOR_API_KEY_HASHES", ""))
    if not hashes and not args.no_auth and not vertex:
        raise PhotoDetectorError("no API key hashes configured",
                                 "set PHOTO_DETECTOR_API_KEY_HASHES (see `photo-detector api-key`) or pass "
                                 "--no-auth for a local, unauthenticated service")
    from photo_detector.serving.app import serve

    port = args.port or int(os.environ.get("AIP_HTTP_PORT") or os.environ.get("PORT") or 8080)
    serve(source, config_from(args), KeyChecker(hashes, allow_all=args.no_auth), host=args.host, port=port)
    return 0


def cmd_api_key(args: argparse.Namespace) -> int:
    from photo_detector.keys import hash_key, new_key

    key = args.key or new_key()
    if args.key is None:
        print(f"key:  {key}")
    print(f"hash: {hash_key(key)}")
    print("store the hash in PHOTO_DETECTOR_API_KEY_HASHES (Secret Manager on Cloud Run); give the key to clients",
          file=sys.stderr)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from photo_detector.scoring import score
    from photo_detector.serving.app import resolve_model

    paths = read = None
    workers = args.workers
    if args.source.startswith("gs://"):  # listed and read here: the library calls no cloud API
        from photo_detector.cloud.batch import list_images
        from photo_detector.cloud.gcs import read_object

        paths, read, workers = list_images(args.source), read_object, workers or 8
    res = score(resolve_model(args.model), args.source, args.out, batch=args.batch, workers=workers, paths=paths,
                read=read)
    print(f"scored {res.scored} images ({res.counts['real']} real, {res.counts['ai_generated']} ai_generated)"
          f"{f', {res.failed} unreadable (their rows say why)' if res.failed else ''}: {res.out}")
    return 0


def cmd_batch_predict(args: argparse.Namespace) -> int:
    from photo_detector.cloud.batch import batch_predict

    res = batch_predict(cloud_settings(args), config_from(args), args.source, args.out, machine_type=args.machine_type,
                        replicas=args.replicas, sync=not args.no_sync, poll_seconds=args.poll_seconds,
                        on_state=lambda s: print(f"state: {s}", flush=True))
    print(f"batch prediction {res.job}\n  model {res.model}\n  {res.instances} instances: {res.instances_uri}\n"
          f"  {res.console_url}")
    print(f"predictions: {res.output}" if res.state == "JOB_STATE_SUCCEEDED" else
          f"submitted ({res.state}); predictions will be written under {res.output}")
    return 0


def add_batch_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch-predict", help="score a gs:// catalog with a Vertex AI batch prediction job on the "
                                             "champion model version")
    add_config_args(p)
    add_cloud_args(p, "service_account")
    p.add_argument("--source", required=True, help="gs://BUCKET/PREFIX of the images (.jpg .jpeg .png .webp)")
    p.add_argument("--out", required=True, help="gs://BUCKET/PREFIX for the instances file and the predictions")
    p.add_argument("--machine-type", default="n1-standard-4", help="prediction machines (default n1-standard-4)")
    p.add_argument("--replicas", type=int, default=1, help="machines working in parallel (default 1)")
    p.add_argument("--no-sync", action="store_true", help="submit and return instead of following the job")
    p.add_argument("--poll-seconds", type=float, default=30.0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_batch_predict)


def add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score a folder or gs:// prefix of images into a CSV, in this process")
    p.add_argument("source", help="a folder of images or gs://BUCKET/PREFIX")
    p.add_argument("--model", required=True, help="a model folder (train --out) or the gs:// URI of one")
    p.add_argument("--out", type=Path, default=Path("scores.csv"), help="CSV to write (default scores.csv)")
    p.add_argument("--batch", type=int, default=16, help="images per model call (default 16)")
    p.add_argument("--workers", type=int, help="threads reading and decoding images (default: one per core; "
                                               "8 for gs://)")
    p.set_defaults(func=cmd_score)


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the prediction service (the serve image's entrypoint)")
    add_config_args(p)
    p.add_argument("--model", help="model folder or gs:// URI (default: $PHOTO_DETECTOR_MODEL_URI)")
    p.add_argument("--host", default="0.0.0.0", help="bind address")
    p.add_argument("--port", type=int, help="default: $AIP_HTTP_PORT (on Vertex AI), $PORT or 8080")
    p.add_argument("--api-key-hashes", help="sha256:<hex>,... (default: $PHOTO_DETECTOR_API_KEY_HASHES)")
    p.add_argument("--no-auth", action="store_true", help="accept requests without X-API-Key (local use only)")
    p.set_defaults(func=cmd_serve)


def add_api_key(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("api-key", help="make an API key and the hash the service stores")
    p.add_argument("--key", help="hash this key instead of making a new one")
    p.set_defaults(func=cmd_api_key)


PARSERS = {"batch-predict": add_batch_predict, "score": add_score, "serve": add_serve, "api-key": add_api_key}
