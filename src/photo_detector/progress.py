"""Progress bars and logging: a live bar on a terminal, periodic plain lines in pipeline logs."""

from __future__ import annotations

import logging
import sys
from typing import Any

from tqdm.auto import tqdm


def progress(**kwargs: Any) -> tqdm:
    """A tqdm bar showing rate and ETA; in non-interactive logs it prints at most every 10 s."""
    interactive = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.2 if interactive else 10.0)
    kwargs.setdefault("dynamic_ncols", interactive)
    return tqdm(file=sys.stderr, **kwargs)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not verbose:  # one line per HTTP request drowns what the command itself says
        logging.getLogger("httpx").setLevel(logging.WARNING)
