"""The serving stack and the command line: model server, router, drift, metrics."""
