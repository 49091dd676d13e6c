"""Container entrypoint of the probe stage: `python -m jobs.probe --spec run.yaml`."""

import sys

from jobs.entrypoint import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("probe"))
