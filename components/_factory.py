"""How every stage becomes a KFP component: its own image, no pip installs at run time, kfp from the image."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kfp import dsl

from photo_detector.cloud.naming import image_uri
from photo_detector.config import Config, load_config

# Component name -> image (and package extra) it runs in.
STAGE_IMAGES: dict[str, str] = {
    "fingerprint": "verify",
    "verify-data": "verify",
    "train": "train",
    "evaluate": "evaluate",
    "quality-gate": "gate",
    "deploy": "deploy",
}


def stage_component(image: str, cfg: Config | None = None,
                    project: str | None = None) -> Callable[[Callable[..., Any]], Any]:
    """Decorator: a lightweight component whose base_image is `image`'s URI from the config."""
    def wrap(func: Callable[..., Any]) -> Any:
        return dsl.component(func, base_image=image_uri(cfg or load_config(), image, project),
                             install_kfp_package=False)
    return wrap


def rebuild(component: Any, cfg: Config, project: str | None = None) -> Any:
    """The same component with the images of `cfg` (e.g. tagged with a commit by cloudbuild)."""
    image = STAGE_IMAGES[component.name]
    return stage_component(image, cfg, project)(component.python_func)
