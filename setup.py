"""Package discovery, so the wheel every image installs cannot drift from the tree.

`components/` and `pipelines/` live at the top level (the KFP layout people expect) but install as
`photo_detector.components` and `photo_detector.pipelines`, so the installed CLI can compile and run them.
pyproject.toml cannot discover packages under a mapped folder; this file does, and nothing is listed by hand.
"""

from setuptools import find_packages, setup

MAPPED = {"photo_detector.components": "components", "photo_detector.pipelines": "pipelines"}

packages = find_packages("src") + [
    f"{name}.{sub}" if sub else name for name, folder in MAPPED.items() for sub in ("", *find_packages(folder))]

setup(packages=packages, package_dir={"": "src", **MAPPED})
