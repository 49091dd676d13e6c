"""Container entrypoint of the curate stage: `python -m jobs.curate --spec run.yaml`."""

import sys

from jobs.entrypoint import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("curate"))
