"""pigment's serving code: a framework-free predictor and the thin TorchServe adapter over it.

``handler.predictor`` imports nothing from TorchServe or ``training``, so it is tested (and usable offline)
without Java; ``pigment_handler.py`` (the archive's entry file) is the only file that imports ``ts``.
"""
