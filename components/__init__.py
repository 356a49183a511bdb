"""KFP components (filled by the pipeline issue)."""
