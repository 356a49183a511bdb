"""`photo-detector`: the command line; every subcommand is a thin call into a library stage function."""

from __future__ import annotations

import argparse
import sys

from photo_detector import __version__
from photo_detector.cli import cloud, data, pipeline, schedule, serving, training
from photo_detector.errors import PhotoDetectorError

# Each module registers its own commands; this is only the order `photo-detector --help` lists them in
# (a command missing here comes last).
ORDER = ("config", "data", "train", "export", "demo", "verify-data", "gate", "deploy", "compile", "run-local",
         "submit", "batch-predict", "score", "setup", "doctor", "schedule", "runs", "template", "serve", "api-key",
         "evaluate")
PARSERS = {**data.PARSERS, **training.PARSERS, **pipeline.PARSERS, **cloud.PARSERS, **schedule.PARSERS,
           **serving.PARSERS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="photo-detector", description=__doc__)
    parser.add_argument("--version", action="version", version=f"photo-detector {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in sorted(PARSERS, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)):
        PARSERS[name](sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from photo_detector.progress import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except PhotoDetectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a Google API error that no command handled: one line, with the fix
        from photo_detector.cloud.retry import user_error

        err = user_error(exc)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
