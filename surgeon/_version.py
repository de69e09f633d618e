"""The surgeon version (layer 1: imports nothing)."""

__version__ = "0.1.0"
