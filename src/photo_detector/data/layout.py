"""Discover CIFAKE-style folders: `<root>/<split>/{real,ai_generated}/*.{jpg,jpeg,png,webp}`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from photo_detector import CLASS_NAMES, SPLITS
from photo_detector.errors import DataError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp"})


@dataclass(frozen=True)
class SplitFiles:
    """The image files of one split, sorted for determinism, with labels (0 real, 1 ai_generated)."""

    split: str
    paths: tuple[Path, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def count(self, label: int) -> int:
        return sum(1 for y in self.labels if y == label)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def discover_split(root: str | Path, split: str) -> SplitFiles:
    """List one split; a missing folder or an empty class is an error that names the path."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist",
                        "pass --data DIR with train/val/test subfolders, or create one with "
                        "`photo-detector data sample DIR`")
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"split folder {split_dir} is missing",
                        f"a dataset needs {', '.join(SPLITS)} subfolders, each with {' and '.join(CLASS_NAMES)}")
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(CLASS_NAMES):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            raise DataError(f"class folder {class_dir} is missing",
                            f"each split needs the folders {' and '.join(CLASS_NAMES)}")
        files = sorted(p for p in class_dir.iterdir() if is_image_file(p))
        if not files:
            raise DataError(f"class folder {class_dir} has no images",
                            f"add {', '.join(sorted(IMAGE_EXTENSIONS))} files to it")
        paths += files
        labels += [label] * len(files)
    return SplitFiles(split, tuple(paths), tuple(labels))


def discover(root: str | Path, splits: tuple[str, ...] = SPLITS) -> dict[str, SplitFiles]:
    return {s: discover_split(root, s) for s in splits}
