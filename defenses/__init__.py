"""Defenses: wrappers that turn a classifier into a defended classifier (still [0, 1] NCHW)."""
