"""Tiny random checkpoints in the exact key layout of the official SD3 files.

The key lists here are written out by hand from docs/reference.md (and Stability's
sd3_impls.py), not derived from our modules, so a naming bug in the library cannot hide by
agreeing with itself. Every tensor is random and non-zero, adaLN and final layers included.
"""
