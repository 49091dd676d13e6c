"""Container entrypoint of the scalar stage: `python -m jobs.scalar --spec run.yaml`."""

import sys

from jobs.entrypoint import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("scalar"))
