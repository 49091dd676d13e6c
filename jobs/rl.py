"""Container entrypoint of the rl stage: `python -m jobs.rl --spec run.yaml`."""

import sys

from jobs.entrypoint import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("rl"))
