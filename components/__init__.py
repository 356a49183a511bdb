"""KFP components, one module per stage; each body adapts artifacts and calls `photo_detector.stages`."""
