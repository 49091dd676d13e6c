"""Sweeps: a base run plus named arms, each a small override of it (the paper's ablations)."""
