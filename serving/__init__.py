"""Host-side tools around TorchServe: build pigment.mar, write a server's config.properties, run a TorchServe on
loopback, and call it over gRPC.

Not ``handler/``: that package is packed into the archive and runs inside TorchServe's Python workers, so it holds
only what a worker needs. This package runs beside the server (scripts/, tests, benchmarks/, kserve/layout.py) and
is never packed. It imports ``model`` only to validate a checkpoint before archiving it.
"""
