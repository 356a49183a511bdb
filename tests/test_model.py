from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from photo_detector.config import ModelConfig
from photo_detector.errors import PhotoDetectorError
from photo_detector.model import build_model, count_trainable

HEAD_PARAMS = (1280 * 512 + 512) + 2 * 512 + (512 + 1)  # Linear, BatchNorm1d (weight+bias), Linear


def test_architecture_and_logits() -> None:
    model = build_model(ModelConfig(pretrained=False)).eval()
    head = model.head
    assert [type(m).__name__ for m in head] == ["Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert (head[0].in_features, head[0].out_features, head[4].out_features) == (1280, 512, 1)
    assert head[3].p == 0.3
    with torch.no_grad():
        out = model(torch.randn(3, 3, 64, 64))
    assert out.shape == (3,)  # raw logits, one per image
    assert ((out < 0) | (out > 1)).any() or out.std() > 0  # not squashed through a sigmoid


def test_freeze_backbone_trains_the_head_only() -> None:
    full = build_model(ModelConfig(pretrained=False))
    frozen = build_model(ModelConfig(pretrained=False, freeze_backbone=True))
    assert count_trainable(frozen) == HEAD_PARAMS
    assert count_trainable(full) == sum(p.numel() for p in full.parameters()) > HEAD_PARAMS
    frozen.train()
    assert not frozen.backbone.training and frozen.head.training  # frozen BatchNorm statistics too


def test_dropout_and_hidden_dim_come_from_config() -> None:
    m = build_model(ModelConfig(pretrained=False, dropout=0.1, hidden_dim=64))
    assert m.head[3].p == 0.1 and m.head[0].out_features == 64


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """A full timm checkpoint (with its 1000-class classifier) saved as .pth and .safetensors."""
    from safetensors.torch import save_file

    torch.manual_seed(123)
    state = timm.create_model("efficientnet_b0", pretrained=False).state_dict()
    d = tmp_path_factory.mktemp("weights")
    torch.save(state, d / "effnet.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(d / "effnet.safetensors"))
    return d / "effnet.pth", d / "effnet.safetensors", state


def _assert_loaded(model, state: dict[str, torch.Tensor]) -> None:
    got = model.backbone.state_dict()
    assert torch.equal(got["conv_stem.weight"], state["conv_stem.weight"])
    assert torch.equal(got["blocks.6.0.conv_pwl.weight"], state["blocks.6.0.conv_pwl.weight"])


@pytest.mark.parametrize("kind", ["pth", "safetensors"])
def test_pretrained_from_local_file(imagenet_like, kind: str) -> None:
    pth, st, state = imagenet_like
    model = build_model(ModelConfig(weights=str(pth if kind == "pth" else st)))
    _assert_loaded(model, state)


def test_pretrained_from_gcs(imagenet_like, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fakes import fake_gcs
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from photo_detector.cloud.weights import fetch_weights

    pth, _, state = imagenet_like
    monkeypatch.setenv("PHOTO_DETECTOR_CACHE", str(tmp_path / "cache"))
    with fake_gcs():
        client = storage.Client(project="test", credentials=AnonymousCredentials())
        client.create_bucket("models").blob("base/effnet.pth").upload_from_filename(str(pth))
        with pytest.raises(PhotoDetectorError, match=r"have not been downloaded"):  # the library fetches nothing
            build_model(ModelConfig(weights="gs://models/base/effnet.pth"))
        fetch_weights(ModelConfig(weights="gs://models/base/effnet.pth"))  # the edge: train command and stage
        model = build_model(ModelConfig(weights="gs://models/base/effnet.pth"))
        _assert_loaded(model, state)
        with pytest.raises(PhotoDetectorError, match=r"could not download gs://models/missing.pth"):
            fetch_weights(ModelConfig(weights="gs://models/missing.pth"))
    assert list((tmp_path / "cache" / "weights").rglob("effnet.pth"))  # cached for the next run
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_offline_hub_error_says_how_to_pass_weights() -> None:
    with pytest.raises(PhotoDetectorError) as err:
        build_model(ModelConfig(pretrained=True, weights=None))
    msg = str(err.value)
    assert "efficientnet_b0" in msg and "model.pretrained=false" in msg and "gs://" in msg


def test_bad_weight_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(PhotoDetectorError, match=r"weights file .*absent.pth does not exist"):
        build_model(ModelConfig(weights=str(tmp_path / "absent.pth")))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PhotoDetectorError, match=r"cannot read weights file .*junk.pth"):
        build_model(ModelConfig(weights=str(junk)))
    other = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), other)
    with pytest.raises(PhotoDetectorError, match=r"do not fit backbone efficientnet_b0"):
        build_model(ModelConfig(weights=str(other)))
