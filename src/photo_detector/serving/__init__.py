"""The prediction service: ONNX Runtime + the torch-free preprocessing behind a small Starlette app."""
