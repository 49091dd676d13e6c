"""Container entrypoints, one per stage: ``python -m jobs.<stage> --spec run.yaml``."""
