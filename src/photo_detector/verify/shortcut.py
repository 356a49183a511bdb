"""Format shortcuts: when metadata alone (format, size, JPEG quality) tells the classes apart, a detector
learns the file type, not the picture (the "Fake or JPEG?" finding about AI-image detector datasets)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

Key = tuple[Any, ...]


def metadata_key(info: dict[str, Any]) -> Key:
    return info.get("format"), info.get("width"), info.get("height"), info.get("quality")


def aligned_key(info: dict[str, Any], quality: int) -> Key:
    """What is left to tell files apart once every one is re-encoded as the same JPEG: its size."""
    return "JPEG", info.get("width"), info.get("height"), quality


def shortcut_score(keys: Sequence[Key], labels: Sequence[int], held_out: Sequence[bool]) -> float:
    """Balanced accuracy, on held-out files, of a lookup-table classifier that sees only `keys`:
    0.5 = the metadata says nothing about the class."""
    train = [(k, y) for k, y, h in zip(keys, labels, held_out, strict=True) if not h]
    test = [(k, y) for k, y, h in zip(keys, labels, held_out, strict=True) if h]
    if not train or not test or len({y for _, y in test}) < 2:
        return 0.5
    votes: dict[Key, Counter[int]] = defaultdict(Counter)
    for k, y in train:
        votes[k][y] += 1
    prior = Counter(y for _, y in train)
    rates = []
    for label in (0, 1):
        members = [k for k, y in test if y == label]
        hits = 0.0
        for k in members:
            v = votes.get(k) or prior
            # Normalised by class size, so predicting the larger class wins nothing; a tie is a coin flip.
            s0, s1 = (v[c] / max(prior[c], 1) for c in (0, 1))
            hits += 0.5 if s0 == s1 else float((1 if s1 > s0 else 0) == label)
        rates.append(hits / len(members))
    return float(np.mean(rates))
