"""Datasets: folder layout, the offline sample generator and the decoded tensor store."""
