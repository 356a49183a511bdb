"""KFP pipelines (filled by the pipeline issue)."""
