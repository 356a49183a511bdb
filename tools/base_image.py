"""The Dockerfiles' base image: pulled when the registry can be reached, else a stand-in built from Debian.

    python tools/base_image.py [--check]

Reads the `FROM` image of every `images/*/Dockerfile` (they all name one: python:3.11.10-slim-bookworm), and
- does nothing if an image with that tag is already in the local Docker store (the stand-in is cached by tag;
  `docker rmi TAG` forces a rebuild);
- else tries `docker pull TAG`;
- else (Docker Hub unreachable, as on the CI machines) builds a local image with exactly that tag from Debian
  bookworm packages (`mmdebstrap --variant=minbase`, then `docker import`) that behaves like the official slim
  image where our Dockerfiles depend on it: `python`, `python3` and `pip` on PATH from a venv at `/usr/local`
  (so `pip install` is allowed, as in the official image), `useradd` present, `LANG=C.UTF-8`, `CMD python3`.
  It also carries this host's CA bundle (`/etc/ssl/certs/ca-certificates.crt`) and tells pip to use it
  (`/etc/pip.conf`), so `docker build` reaches the package registries through this network's TLS proxy.

The stand-in is labelled `org.photo-detector.stand-in=true`; images/README.md says how it differs from the
official image (Debian's Python 3.11.2 instead of 3.11.10) and why that does not matter for what we run.
`--check` only reports what is there and exits 1 when the tag is missing. Needs a running Docker daemon; the
fallback needs root and `mmdebstrap` (`apt-get install mmdebstrap`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
STAND_IN_LABEL = "org.photo-detector.stand-in"
PULL_TIMEOUT_S = 120
# What the official python:*-slim image sets and our Dockerfiles or their commands rely on.
CHANGES = ["ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "ENV LANG=C.UTF-8",
           f"LABEL {STAND_IN_LABEL}=true", 'CMD ["python3"]']
# Runs inside the new root filesystem: the venv under /usr/local, and the checks the Dockerfiles depend on.
SETUP = """set -e
python3 -m venv /usr/local
printf '[global]\\ncert = /etc/ssl/certs/ca-certificates.crt\\n' > /etc/pip.conf
/usr/local/bin/python -m pip --version
command -v useradd
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /root/.cache
"""


class BaseImageError(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")


def base_tags() -> list[str]:
    """Every distinct `FROM` image of the Dockerfiles (stage aliases and `FROM <stage>` left out)."""
    tags: list[str] = []
    for dockerfile in sorted((ROOT / "images").glob("*/Dockerfile")):
        text = dockerfile.read_text(encoding="utf-8")
        aliases = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.M | re.I))
        for tag in re.findall(r"^FROM\s+(\S+)", text, re.M | re.I):
            if tag not in aliases and tag not in tags:
                tags.append(tag)
    if not tags:
        raise BaseImageError(f"no FROM line in {ROOT / 'images'}/*/Dockerfile")
    return tags


def docker(*args: str, timeout: float | None = None, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=timeout,
                          **kwargs)  # type: ignore[call-overload]


def describe(tag: str) -> str | None:
    """'stand-in' or 'official' for a tag in the local store, None when it is not there."""
    res = docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{STAND_IN_LABEL}"}}}}', tag)
    if res.returncode != 0:
        return None
    return "stand-in" if res.stdout.strip() == "true" else "official"


def suite_of(tag: str) -> str:
    match = re.search(r"-(bookworm|bullseye|trixie)\b", tag)
    if not match or not tag.startswith("python:3.11"):
        raise BaseImageError(f"can only stand in for python:3.11*-<debian suite> images, not {tag}")
    if match.group(1) != "bookworm":
        raise BaseImageError(f"{tag}: Debian {match.group(1)} does not ship Python 3.11; only bookworm does")
    return match.group(1)


def build_stand_in(tag: str) -> None:
    suite = suite_of(tag)
    if shutil.which("mmdebstrap") is None:
        raise BaseImageError(f"cannot pull {tag} and mmdebstrap is missing: apt-get install -y mmdebstrap")
    if not CA_BUNDLE.is_file():
        raise BaseImageError(f"{CA_BUNDLE} is missing: the stand-in needs the host's CA bundle to reach PyPI")
    print(f"building the stand-in {tag} from Debian {suite} packages (mmdebstrap, ~1 min)", flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        setup = Path(tmp) / "stand-in-setup.sh"
        setup.write_text(SETUP, encoding="utf-8")
        strap = subprocess.Popen(
            ["mmdebstrap", "--quiet", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
             f"--customize-hook=copy-in {CA_BUNDLE} {CA_BUNDLE.parent}", f"--customize-hook=copy-in {setup} /tmp",
             f'--customize-hook=chroot "$1" sh /tmp/{setup.name}', f'--customize-hook=rm "$1/tmp/{setup.name}"',
             suite, "-"], stdout=subprocess.PIPE)
        assert strap.stdout is not None
        imported = subprocess.run(["docker", "import", *(a for c in CHANGES for a in ("--change", c)), "-", tag],
                                  stdin=strap.stdout, capture_output=True, text=True, check=False)
        strap.stdout.close()
        strap.wait()
    if strap.returncode != 0:
        raise BaseImageError(f"mmdebstrap failed (exit {strap.returncode}); its output is above")
    if imported.returncode != 0:
        raise BaseImageError(f"docker import failed: {imported.stderr.strip()}")
    check = docker("run", "--rm", tag, "sh", "-ec",
                   "python --version; pip --version; command -v useradd; python -c 'import ssl, venv, sqlite3'")
    if check.returncode != 0:
        raise BaseImageError(f"the stand-in {tag} was built but fails its own check: {check.stderr.strip()}")
    print(f"stand-in {tag} built in {time.perf_counter() - start:.0f}s: "
          f"{' / '.join(check.stdout.split(chr(10))[:2])}", flush=True)


def ensure(tag: str, *, check_only: bool = False) -> str:
    have = describe(tag)
    if have or check_only:
        print(f"{tag}: {have + ' image present' if have else 'missing'}", flush=True)
        return have or "missing"
    print(f"{tag}: not in the local store; docker pull {tag}", flush=True)
    try:
        pulled = docker("pull", "--quiet", tag, timeout=PULL_TIMEOUT_S)
        ok, why = pulled.returncode == 0, pulled.stderr.strip()
    except subprocess.TimeoutExpired:
        ok, why = False, f"no answer in {PULL_TIMEOUT_S}s"
    if ok:
        print(f"{tag}: pulled the official image", flush=True)
        return "official"
    print(f"{tag}: pull failed ({why.splitlines()[-1] if why else 'no reason given'})", flush=True)
    build_stand_in(tag)
    return "stand-in"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if a base image is missing")
    args = parser.parse_args(argv)
    if shutil.which("docker") is None:
        raise BaseImageError("the docker CLI is missing: apt-get install -y docker.io")
    info = docker("info", "--format", "{{.ServerVersion}}", timeout=60)
    if info.returncode != 0:
        raise BaseImageError(f"no Docker daemon answers ({info.stderr.strip().splitlines()[-1:]}); "
                             "start one: dockerd >/tmp/dockerd.log 2>&1 &")
    states = [ensure(tag, check_only=args.check) for tag in base_tags()]
    return 1 if "missing" in states else 0


if __name__ == "__main__":
    sys.exit(main())
