"""Data the project ships as package data, where the system's copies live, and the scripts that
regenerate what is shipped."""

from __future__ import annotations

from pathlib import Path

# Where Debian's (and Ubuntu's) package `dataset-fashion-mnist` installs the official files.
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# The stratified subset shipped inside the package (see its README and make_fashion_subset).
FASHION_MNIST_SUBSET = Path(__file__).resolve().parent / "fashion-mnist-subset"
