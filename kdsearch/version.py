"""kdsearch's version: written into every results folder, cache entry and report."""

__version__ = "0.1.0"
