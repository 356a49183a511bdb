"""What the command modules share: config and cloud flags, and how they become settings."""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any

from photo_detector.errors import PhotoDetectorError


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE|PROFILE",
                   help="YAML overriding the packaged defaults, or a profile name (e.g. sample)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.warmup_epochs=0 (repeatable)")


def config_from(args: argparse.Namespace, flags: dict[str, Any] | None = None):
    from photo_detector.config import load_config, parse_override

    overrides = dict(parse_override(o) for o in args.overrides)
    overrides.update({k: v for k, v in (flags or {}).items() if v is not None})
    return load_config(args.config, overrides)


def add_cloud_args(p: argparse.ArgumentParser, *names: str) -> None:
    from photo_detector.cloud.settings import SOURCES

    for name in ("project", "region", *names):
        key, env, flag = SOURCES[name]
        p.add_argument(flag, dest=f"cloud_{name}", metavar=name.upper(), help=f"{key} (env {env})")


def cloud_settings(args: argparse.Namespace):
    from photo_detector.cloud.settings import SOURCES, resolve

    flags = {name: getattr(args, f"cloud_{name}", None) for name in SOURCES}
    return resolve(config_from(args), flags)


def parse_labels(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key) or not re.fullmatch(r"[a-z0-9_-]{0,63}", value):
            raise PhotoDetectorError(f"label '{item}' is not KEY=VALUE in lower-case letters, digits, _ and -",
                                     "e.g. --label team=vision")
        labels[key] = value
    return labels


def print_rows(rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "") if r.get(c) is not None else "-").ljust(widths[c]) for c in columns))


def tempfile_name(prefix: str, suffix: str) -> str:
    import tempfile

    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix)
    os.close(fd)
    return name
