"""API keys and the hashes stored in their place. Neither cloud nor web: `setup` (cloud) makes a key and
stores its hash, the service (serving) checks presented keys against hashes, and both use these two."""

from __future__ import annotations

import hashlib
import secrets


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return secrets.token_urlsafe(32)
