"""pigment's performance work, never imported by the product: the full benchmark (``python -m benchmarks``), the
fast-path accuracy check (``python -m benchmarks.accuracy``), the load generator (``python -m benchmarks.loadgen``),
the CPU meter, the report, and the one-request-at-a-time baseline server (baseline_app.py).
"""
