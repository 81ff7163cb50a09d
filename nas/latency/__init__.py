"""Latency tables: every distinct part of a search space timed on the target device, and the
prediction of a whole network's latency from them (`python -m nas.latency profile`)."""
