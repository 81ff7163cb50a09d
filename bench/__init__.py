"""Benchmarks that answer the project's open performance questions (docs/benchmarks.md).

Each is a module of the checkout, run from its root: `python -m bench.overhead --help`. They
are measurements, not tests: nothing here asserts a timing.
"""
