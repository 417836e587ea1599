"""pigment's model package: configuration, preprocessing, the fusion network, severity and checkpoints.

Everything here is framework-free (no TorchServe) and imports nothing from ``training`` or ``handler``.
"""
