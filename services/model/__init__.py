"""The model: artifact format, export, onnxruntime runtime, input validation, HTTP-free dataplane."""
