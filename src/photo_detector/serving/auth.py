"""X-API-Key checking against stored SHA-256 hashes, in constant time.

Only hashes are configured (PHOTO_DETECTOR_API_KEY_HASHES, filled from Secret Manager on Cloud Run), so a
leaked environment does not leak keys. A missing and a wrong key take the same path and get the same 401.
"""

from __future__ import annotations

import hmac
import re

from photo_detector.errors import ConfigError
from photo_detector.keys import hash_key

HASH_RE = re.compile(r"sha256:[0-9a-f]{64}")


def parse_hashes(text: str, source: str = "PHOTO_DETECTOR_API_KEY_HASHES") -> list[str]:
    """Comma- or newline-separated `sha256:<hex>` values; anything else is a configuration error."""
    hashes = [h.strip() for h in re.split(r"[,\s]+", text or "") if h.strip()]
    bad = [h for h in hashes if not HASH_RE.fullmatch(h)]
    if bad:
        raise ConfigError(f"{source} holds {len(bad)} value(s) that are not sha256:<64 hex digits>",
                          "store hashes, not keys: `photo-detector api-key` prints a new key and its hash")
    return hashes


class KeyChecker:
    def __init__(self, hashes: list[str], *, allow_all: bool = False) -> None:
        self._hashes = [h.encode() for h in hashes]
        self.allow_all = allow_all

    def __bool__(self) -> bool:
        return bool(self._hashes)

    def check(self, presented: str | None) -> bool:
        """Compare against every stored hash (no early exit), so timing says nothing about which matched."""
        if self.allow_all:
            return True
        candidate = hash_key(presented or "").encode()
        ok = False
        for stored in self._hashes:
            ok |= hmac.compare_digest(candidate, stored)
        return ok and bool(presented)
