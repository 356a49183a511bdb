"""The detector: a timm backbone (global-pooled features) and a small binary head returning raw logits."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import nn

from photo_detector.config import ModelConfig
from photo_detector.errors import PhotoDetectorError

log = logging.getLogger(__name__)



def cache_dir() -> Path:
    """Where downloaded weights are kept; PHOTO_DETECTOR_CACHE overrides ~/.cache/photo_detector."""
    return Path(os.environ.get("PHOTO_DETECTOR_CACHE", Path.home() / ".cache" / "photo_detector"))


class PhotoDetector(nn.Module):
    """backbone -> Linear(F, hidden) -> BatchNorm1d -> ReLU -> Dropout -> Linear(hidden, 1)."""

    def __init__(self, backbone: nn.Module, num_features: int, hidden_dim: int, dropout: float,
                 freeze_backbone: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.Linear(num_features, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, 1),
        )
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> PhotoDetector:
        super().train(mode)
        if self.freeze_backbone:  # a frozen backbone keeps its BatchNorm statistics too
            self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N,) logits of `ai_generated`."""
        return self.head(self.backbone(x)).squeeze(1)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(cfg: ModelConfig, *, load_pretrained: bool | None = None) -> PhotoDetector:
    """Build the detector; pretrained weights come from `cfg.weights` or the timm hub when enabled.

    `load_pretrained=False` skips weights (e.g. when a checkpoint will be loaded over them anyway).
    """
    import timm

    want = cfg.pretrained if load_pretrained is None else load_pretrained
    try:
        backbone = timm.create_model(cfg.name, pretrained=False, num_classes=0)
    except RuntimeError as exc:  # timm: unknown model name
        raise PhotoDetectorError(f"config key 'model.name': {exc}",
                                 "use a timm model name such as efficientnet_b0") from None
    if want:
        load_backbone_weights(backbone, cfg.name, cfg.weights)
    return PhotoDetector(backbone, backbone.num_features, cfg.hidden_dim, cfg.dropout, cfg.freeze_backbone)


# ---------------------------------------------------------------------------------------------------------
# Pretrained weights: timm hub name, local file or gs:// URI


WEIGHTS_HOW = ("pass model.weights=PATH (a .safetensors/.pth file), gs://BUCKET/PATH or hf-hub:ORG/NAME "
        "(e.g. --weights FILE), or set model.pretrained=false to train from scratch")


def load_backbone_weights(backbone: nn.Module, name: str, source: str | None) -> None:
    """Load ImageNet weights into `backbone`; the classifier of the source checkpoint is dropped."""
    if source is None or source.startswith("hf-hub:") or source.startswith("timm/"):
        state = _hub_state_dict(name, source)
        where = source or f"the timm hub default for {name}"
    else:
        path = _cached_gcs(source) if source.startswith("gs://") else Path(source).expanduser()
        state = _file_state_dict(path)
        where = source
    state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "fc.", "head.fc."))}
    own = backbone.state_dict()
    mismatched = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected or mismatched:
        raise PhotoDetectorError(
            f"weights from {where} do not fit backbone {name}: {len(missing)} missing keys "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected, {len(mismatched)} of another shape "
            f"(e.g. {mismatched[:2]})", "use weights saved from the same timm model")
    backbone.load_state_dict(state)
    log.info("loaded pretrained backbone weights from %s", where)


def _hub_state_dict(name: str, source: str | None) -> dict[str, torch.Tensor]:
    import timm

    model_name = f"hf-hub:{source.removeprefix('hf-hub:')}" if source else name
    try:
        model = timm.create_model(model_name, pretrained=True, num_classes=0)
    except Exception as exc:  # network, auth or missing-repo errors all end the same way for the user
        raise PhotoDetectorError(
            f"could not download pretrained weights for '{model_name}' from the Hugging Face hub "
            f"({type(exc).__name__})", WEIGHTS_HOW) from None
    return model.state_dict()


def _file_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PhotoDetectorError(f"weights file {path} does not exist", WEIGHTS_HOW)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PhotoDetectorError(f"cannot read weights file {path}: {exc}", WEIGHTS_HOW) from None
    for key in ("state_dict", "model_state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise PhotoDetectorError(f"weights file {path} holds no state dict", WEIGHTS_HOW)
    return {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}


def weights_cache_path(uri: str) -> Path:
    """Where gs://BUCKET/PATH weights are kept once downloaded. The download is the edge's job (the train
    command and stage call photo_detector.cloud.weights.fetch_weights); this module only reads the file."""
    bucket_name, _, blob_name = uri.removeprefix("gs://").partition("/")
    if not bucket_name or not blob_name:
        raise PhotoDetectorError(f"'{uri}' is not a gs://BUCKET/PATH URI", WEIGHTS_HOW)
    return cache_dir() / "weights" / hashlib.sha256(uri.encode()).hexdigest()[:16] / Path(blob_name).name


def _cached_gcs(uri: str) -> Path:
    path = weights_cache_path(uri)
    if not path.is_file():
        raise PhotoDetectorError(f"weights {uri} have not been downloaded to {path}",
                                 "`photo-detector train` and the train stage download gs:// weights first; "
                                 "elsewhere call photo_detector.cloud.weights.fetch_weights(cfg.model)")
    return path
