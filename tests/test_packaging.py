"""What ships is the wheel: built the way the images build it (not editable), it holds every module of the
package, the mapped components/ and pipelines/ included, and the packaged configs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rehearsal_module():
    spec = importlib.util.spec_from_file_location("rehearse_images", ROOT / "tools" / "rehearse_images.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def built_wheel(out: Path) -> Path:
    """The wheel of this tree, built as the images build it (not editable), into `out`."""
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return next(out.glob("photo_detector-*.whl"))


def test_the_built_wheel_holds_every_module_and_config(tmp_path: Path) -> None:
    wheel = built_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = rehearsal_module().tree_modules()
    assert len(expected) > 50 and {"photo_detector/components/train.py", "photo_detector/pipelines/compile.py",
                                   "photo_detector/cloud/rollout.py", "photo_detector/serving/app.py",
                                   "photo_detector/configs/default.yaml"} <= set(expected)
    assert sorted(m for m in expected if m not in names) == []
    static = ROOT / "src" / "photo_detector" / "serving" / "static"
    page = sorted(f"photo_detector/serving/static/{f.name}" for f in static.iterdir())
    assert len(page) >= 3 and [f for f in page if f not in names] == []  # the review page at / ships too
    assert not any(n.startswith(("tests/", "tools/", "benchmarks/", "components/", "pipelines/")) for n in names)


def test_dockerfile_installs_are_read_from_the_dockerfiles() -> None:
    module = rehearsal_module()
    assert module.dockerfile_installs("verify") == ([], "verify")
    pins, extra = module.dockerfile_installs("train")
    assert extra == "train" and [p.split("==")[0] for p in pins] == ["torch", "torchvision"]
