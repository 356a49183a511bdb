"""KFP pipelines built from `photo_detector.components`."""
