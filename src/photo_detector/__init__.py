"""photo-detector: a detector of AI-generated product photos, trained and shipped by a KFP v2 pipeline."""

__version__ = "0.1.0"

CLASS_NAMES: tuple[str, str] = ("real", "ai_generated")
"""Folder names in label order: index 0 is `real`, index 1 is `ai_generated` (the positive class)."""

SPLITS: tuple[str, str, str] = ("train", "val", "test")
