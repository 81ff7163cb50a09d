"""Deprecated alias: the search driver now lives in `trials.ray_runner` (the one Ray module)."""

from trials.ray_runner import available_cpus, connect, run_search  # noqa: F401
