"""pigment's training side: datasets, the synthetic benchmark, training, evaluation, single-image inference, export.

Imports from ``model`` only; nothing in ``model`` or ``handler`` imports this package.
"""
