"""The search: CLI, controller, sampling strategy, pruner, Pareto helpers and the anchor.

`python -m nas.search` runs `nas.search.cli.main`.
"""
