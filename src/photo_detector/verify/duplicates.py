"""Exact and near duplicates: which files show the same picture, within a split and across splits.

Memory stays proportional to the number of files (a 64-bit hash and a 256-byte thumbnail each) however the
hashes cluster: candidate pairs are found by banding (no all-pairs matrix), compared in blocks of at most
BLOCK_ELEMENTS, and confirmed on thumbnails in chunks.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

BLOCK_ELEMENTS = 1 << 22  # hash comparisons per block: 4M x (8-byte XOR + 1-byte count) = 36 MB at most


def popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], np.uint8)
    return table[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1)


def near_pairs(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """(k, 2) index pairs i < j whose 64-bit hashes differ in at most `max_distance` bits, without comparing
    all pairs: split the hash into max_distance + 1 bands; two hashes that close agree exactly on at least one
    band (pigeonhole), so only hashes sharing a band value are compared. An array, not tuples: look-alike
    data yields millions of candidates (16 bytes each here, ~70 as Python tuples)."""
    n = len(hashes)
    bands = max_distance + 1
    width = -(-64 // bands)
    found: list[np.ndarray] = []
    for b in range(bands):
        shift = b * width
        if shift >= 64:
            break
        keys = (hashes >> np.uint64(shift)) & np.uint64((1 << min(width, 64 - shift)) - 1)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], n]
        for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
            if hi - lo < 2:
                continue
            members = np.sort(order[lo:hi])
            rows = max(1, BLOCK_ELEMENTS // len(members))
            for k in range(0, len(members), rows):  # bounded blocks however large the bucket
                block = members[k:k + rows]
                dist = popcount(hashes[block][:, None] ^ hashes[members][None, :])
                i, j = np.nonzero(dist <= max_distance)
                a, c = block[i], members[j]
                keep = a < c
                found.append(a[keep].astype(np.int64) * n + c[keep])
    keys = np.unique(np.concatenate(found)) if found else np.empty(0, np.int64)
    return np.stack([keys // n, keys % n], axis=1)


def groups(n: int, pairs: np.ndarray) -> list[list[int]]:
    """Connected groups of indices (union-find), for reporting look-alikes within a split."""
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs.tolist():
        parent[find(a)] = find(b)
    out: dict[int, list[int]] = defaultdict(list)
    for i in np.unique(pairs).tolist():
        out[find(i)].append(i)
    return [sorted(g) for g in out.values()]


@dataclass(frozen=True)
class Pairs:
    exact: np.ndarray  # (k, 2) indices
    near: np.ndarray


def find_duplicates(pixels: list[bytes], hashes: np.ndarray, thumbs: np.ndarray, max_distance: int,
                    max_mad: float, chunk: int = 65536) -> Pairs:
    """Exact: identical decoded pixels. Near: perceptual hashes within `max_distance` bits *and* grey
    thumbnails within `max_mad` grey levels on average (the hash alone confuses flat textures)."""
    by_pixels: dict[bytes, list[int]] = defaultdict(list)
    for i, digest in enumerate(pixels):
        by_pixels[digest].append(i)
    exact = np.array([(g[0], j) for g in by_pixels.values() if len(g) > 1 for j in g[1:]], np.int64).reshape(-1, 2)
    same = np.empty(len(pixels), np.int64)
    for g in by_pixels.values():
        same[g] = g[0]
    del by_pixels
    near = [np.empty((0, 2), np.int64)]
    if max_distance >= 0 and len(pixels) > 1:
        candidates = near_pairs(hashes, max_distance)
        for k in range(0, len(candidates), chunk):
            a, b = candidates[k:k + chunk, 0], candidates[k:k + chunk, 1]
            mad = np.abs(thumbs[a].astype(np.int16) - thumbs[b].astype(np.int16)).mean(axis=1)
            keep = (same[a] != same[b]) & (mad <= max_mad)
            near.append(candidates[k:k + chunk][keep])
    return Pairs(exact, np.concatenate(near))
