"""Benchmark-only code (the design-style baseline server); never imported by the product."""
