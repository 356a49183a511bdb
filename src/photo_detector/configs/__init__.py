"""Packaged configs: `default.yaml` holds every key; profiles (e.g. `sample.yaml`) override a few."""
