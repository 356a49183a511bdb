"""Discover CIFAKE-style folders: `<root>/<split>/{real,ai_generated}/*.{jpg,jpeg,png,webp}`.

A class folder may hold subfolders (`ai_generated/<generator>/...`, `real/<source>/...`): the first
subfolder's name is the image's *source*, which evaluation reports metrics by; an image directly in the
class folder has the class name as its source."""

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
    sources: tuple[str, ...] = ()  # per file (see source_of); empty when the caller did not record them

    def __len__(self) -> int:
        return len(self.paths)

    def count(self, label: int) -> int:
        return sum(1 for y in self.labels if y == label)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def class_images(class_dir: Path) -> list[Path]:
    """The images of one class folder at any depth, sorted (hidden files and folders skipped)."""
    return sorted(p for p in class_dir.rglob("*") if is_image_file(p)
                  and not any(part.startswith(".") for part in p.relative_to(class_dir).parts))


def source_of(rel: str | Path) -> str:
    """The source of an image from its path relative to the dataset root (`split/class/[source/...]file`):
    the first folder below the class folder, else the class name."""
    parts = Path(rel).parts
    return parts[2] if len(parts) > 3 else parts[1]


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
        files = class_images(class_dir)
        if not files:
            raise DataError(f"class folder {class_dir} has no images",
                            f"add {', '.join(sorted(IMAGE_EXTENSIONS))} files to it (or to subfolders "
                            "named after their source)")
        paths += files
        labels += [label] * len(files)
    return SplitFiles(split, tuple(paths), tuple(labels), tuple(source_of(p.relative_to(root)) for p in paths))


def discover(root: str | Path, splits: tuple[str, ...] = SPLITS) -> dict[str, SplitFiles]:
    return {s: discover_split(root, s) for s in splits}
