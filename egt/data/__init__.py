"""Preference datasets: the record schema every stage reads and writes, and the synthetic generator.

A record is a plain dict (method.md, "Data"): ``id``, ``images`` (paths relative to the dataset
directory), ``query``, ``response_1``, ``response_2``, ``label`` (1 or 2), ``category``, ``source``.
Stages add columns to it rather than writing new files.
"""
