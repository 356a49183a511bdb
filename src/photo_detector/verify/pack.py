"""The packed store verify-data writes as it decodes: one .npy per packed split, header up front, squares
appended in order, so memory stays flat however large the data. Rows found unusable later (quarantined
held-out files) are dropped by a chunked copy; the manifest is written last: a folder with one is complete."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from photo_detector.data.packed import FORMAT_VERSION, MANIFEST, save_npy
from photo_detector.io import write_json_atomic

PACKED_SPLITS = ("train", "val")  # what training reads; test stays files for the evaluate stage
COPY_ROWS = 4096


def _header(handle: Any, n: int, size: int) -> None:
    np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                                  "fortran_order": False, "shape": (n, size, size, 3)})


class PackedWriter:
    def __init__(self, out: Path, counts: dict[str, int], size: int) -> None:
        self.out, self.size = out, size
        self.handles = {}
        self.labels: dict[str, list[int]] = {s: [] for s in PACKED_SPLITS}
        self.paths: dict[str, list[str]] = {s: [] for s in PACKED_SPLITS}
        for split in PACKED_SPLITS:
            handle = open(self._partial(split), "wb")  # noqa: SIM115 - closed in close() or discard()
            _header(handle, counts.get(split, 0), size)
            self.handles[split] = handle

    def _partial(self, split: str) -> Path:
        return self.out / f".{split}.images.npy.partial"

    def append(self, split: str, square: bytes, label: int, rel: str) -> None:
        self.handles[split].write(square)
        self.labels[split].append(label)
        self.paths[split].append(rel)

    def discard(self) -> None:
        """No half-usable packed data next to a failed report."""
        for split, handle in self.handles.items():
            handle.close()
            self._partial(split).unlink(missing_ok=True)
            for suffix in (".images.npy", ".labels.npy"):
                (self.out / f"{split}{suffix}").unlink(missing_ok=True)

    def close(self, drop: set[str], manifest: dict[str, Any]) -> dict[str, Any]:
        """Drop the rows whose path is in `drop`, move the arrays into place, write the manifest last."""
        splits: dict[str, Any] = {}
        for split, handle in self.handles.items():
            handle.close()
            keep = [i for i, rel in enumerate(self.paths[split]) if rel not in drop]
            partial, final = self._partial(split), self.out / f"{split}.images.npy"
            if len(keep) == len(self.paths[split]):
                os.replace(partial, final)
            else:
                self._compact(partial, final, keep)
            labels = np.asarray(self.labels[split], np.int64)[keep]
            save_npy(self.out / f"{split}.labels.npy", labels)
            splits[split] = {"count": len(keep), "real": int((labels == 0).sum()),
                             "ai_generated": int((labels == 1).sum()),
                             "paths": [self.paths[split][i] for i in keep]}
        manifest = {"format_version": FORMAT_VERSION, **manifest, "store_size": self.size, "splits": splits}
        write_json_atomic(self.out / MANIFEST, manifest)
        return manifest

    def _compact(self, partial: Path, final: Path, keep: list[int]) -> None:
        source = np.load(partial, mmap_mode="r")
        tmp = final.with_name(f".{final.name}.tmp")
        with open(tmp, "wb") as f:
            _header(f, len(keep), self.size)
            for k in range(0, len(keep), COPY_ROWS):
                f.write(np.ascontiguousarray(source[keep[k:k + COPY_ROWS]]).tobytes())
        del source
        os.replace(tmp, final)
        partial.unlink()
