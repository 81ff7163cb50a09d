"""Export of a searched architecture as a standalone PyTorch module: CLI, codegen, verification.

`python -m nas.export` runs `nas.export.cli.main`.
"""
