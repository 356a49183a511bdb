"""fingerprint: names, sizes and checksums of the dataset from listings (never cached: it keys the cache)."""

from typing import NamedTuple

from photo_detector.components._factory import stage_component


@stage_component("verify")
def fingerprint(data_uri: str) -> NamedTuple("Outputs", [("fingerprint", str), ("files", int)]):
    """Cheap and uncached; verify-data, train and evaluate are cached on what it returns."""
    from photo_detector import stages

    return stages.fingerprint(data_uri)
