"""Container entrypoint of the score stage: `python -m jobs.score --spec run.yaml`."""

import sys

from jobs.entrypoint import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("score"))
