"""verify-data: check a dataset, quarantine leakage, align format shortcuts, pack it for training.

One module per job: `inspect` (one file, in a worker), `duplicates`, `shortcut`, `pack` (the store),
`report` (findings and their forms) and `run` (the stage that ties them together).
"""

from photo_detector.verify.inspect import jpeg_quality, perceptual_hash
from photo_detector.verify.report import REPORT_JSON, REPORT_MD, Finding, Quarantined, VerifyResult
from photo_detector.verify.run import quarantine_metadata, run_verify

__all__ = ["REPORT_JSON", "REPORT_MD", "Finding", "Quarantined", "VerifyResult", "jpeg_quality", "perceptual_hash",
           "quarantine_metadata", "run_verify"]
