"""gs:// pretrained weights, downloaded at the edge (the train command and stage) into the cache that
photo_detector.model reads, so the library itself calls no Cloud Storage API."""

from __future__ import annotations

from photo_detector.config import ModelConfig
from photo_detector.errors import PhotoDetectorError


def fetch_weights(cfg: ModelConfig) -> None:
    """Download `model.weights` once when it is a gs:// URI (atomic rename; honours STORAGE_EMULATOR_HOST)."""
    if not (cfg.pretrained and cfg.weights and cfg.weights.startswith("gs://")):
        return
    from photo_detector.io import atomic_path
    from photo_detector.model import WEIGHTS_HOW, weights_cache_path

    uri = cfg.weights
    target = weights_cache_path(uri)
    if target.is_file():
        return
    try:
        from photo_detector.cloud.gcs import client, split_uri

        bucket_name, blob_name = split_uri(uri)
        with atomic_path(target) as tmp:
            client().bucket(bucket_name).blob(blob_name).download_to_filename(str(tmp))
    except ImportError:
        raise PhotoDetectorError("reading gs:// weights needs google-cloud-storage",
                                 "pip install 'photo-detector[train]'") from None
    except Exception as exc:
        raise PhotoDetectorError(f"could not download {uri}: {type(exc).__name__}: {exc}", WEIGHTS_HOW) from None
