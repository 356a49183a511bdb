"""The sharded store verify-data writes as it decodes: squares appended to fixed-size shard files
(`verify.shard_mb` each), hashed as they are written, so memory stays flat however large the data. Rows found
unusable later (quarantined held-out files) are dropped by rewriting the shards that hold them; the manifest
is written last: a folder with one is complete."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from photo_detector.data.packed import FORMAT_VERSION, INDEX_DIR, MANIFEST, SHARD_DIR, labels_file, paths_file
from photo_detector.io import write_atomic, write_json_atomic, write_text_atomic

PACKED_SPLITS = ("train", "val")  # what training reads; test stays files for the evaluate stage


@dataclass
class _Shard:
    file: str
    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    sha256: str = ""


class PackedWriter:
    def __init__(self, out: Path, size: int, shard_bytes: int) -> None:
        self.out, self.size = out, size
        self.row_bytes = size * size * 3
        self.rows_per_shard = max(1, shard_bytes // self.row_bytes)
        (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        (out / INDEX_DIR).mkdir(exist_ok=True)
        self._remove_stale()
        self.shards: dict[str, list[_Shard]] = {s: [] for s in PACKED_SPLITS}
        self._open: dict[str, tuple[BinaryIO, Any]] = {}

    def _remove_stale(self) -> None:
        """Shards of an earlier run into the same folder (a retried task) must not outlive it."""
        for p in [*(self.out / SHARD_DIR).iterdir(), *(self.out / INDEX_DIR).iterdir()]:
            if p.is_file():
                p.unlink()
        (self.out / MANIFEST).unlink(missing_ok=True)

    def _partial(self, file: str) -> Path:
        return self.out / f"{file}.partial"

    def append(self, split: str, square: bytes, label: int, rel: str) -> None:
        shards = self.shards[split]
        if not shards or len(shards[-1].paths) == self.rows_per_shard:
            self._finish(split)
            shards.append(_Shard(f"{SHARD_DIR}/{split}-{len(shards):05d}.u8"))
            self._open[split] = (open(self._partial(shards[-1].file), "wb"), hashlib.sha256())  # noqa: SIM115
        handle, h = self._open[split]
        handle.write(square)
        h.update(square)
        shards[-1].paths.append(rel)
        shards[-1].labels.append(label)

    def _finish(self, split: str) -> None:
        if split in self._open:
            handle, h = self._open.pop(split)
            handle.close()
            self.shards[split][-1].sha256 = h.hexdigest()

    def discard(self) -> None:
        """No half-usable packed data next to a failed report."""
        for split in PACKED_SPLITS:
            self._finish(split)
            for s in self.shards[split]:
                self._partial(s.file).unlink(missing_ok=True)
                (self.out / s.file).unlink(missing_ok=True)

    def close(self, drop: set[str], manifest: dict[str, Any]) -> dict[str, Any]:
        """Drop the rows whose path is in `drop`, move the shards into place, write the manifest last."""
        splits: dict[str, Any] = {}
        for split in PACKED_SPLITS:
            self._finish(split)
            listed, paths, labels = [], [], []
            for s in self.shards[split]:
                keep = [i for i, rel in enumerate(s.paths) if rel not in drop]
                partial, final = self._partial(s.file), self.out / s.file
                if not keep:
                    partial.unlink()
                    continue
                if len(keep) < len(s.paths):
                    s.sha256 = self._compact(partial, keep)
                os.replace(partial, final)
                listed.append({"file": s.file, "count": len(keep), "bytes": len(keep) * self.row_bytes,
                               "sha256": s.sha256})
                paths += [s.paths[i] for i in keep]
                labels += [s.labels[i] for i in keep]
            # Per-row lists in their own files (data.packed says why), written before the manifest.
            write_atomic(self.out / labels_file(split), lambda tmp: tmp.write_bytes(bytes(labels)))  # noqa: B023
            write_text_atomic(self.out / paths_file(split), json.dumps(paths, separators=(",", ":")))
            splits[split] = {"count": len(labels), "real": labels.count(0), "ai_generated": labels.count(1),
                             "bytes": len(labels) * self.row_bytes, "shards": listed,
                             "labels_file": labels_file(split), "paths_file": paths_file(split)}
        manifest = {"format_version": FORMAT_VERSION, **manifest, "store_size": self.size,
                    "content": "squares", "splits": splits}
        write_json_atomic(self.out / MANIFEST, manifest)
        return manifest

    def _compact(self, partial: Path, keep: list[int]) -> str:
        """Rewrite one shard with the kept rows only (one shard in memory at most); its new SHA-256."""
        data = partial.read_bytes()
        kept = b"".join(data[i * self.row_bytes:(i + 1) * self.row_bytes] for i in keep)
        tmp = partial.with_name(partial.name + ".tmp")
        tmp.write_bytes(kept)
        os.replace(tmp, partial)
        return hashlib.sha256(kept).hexdigest()
