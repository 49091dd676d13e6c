"""Container entrypoint of the prepare stage: `python -m jobs.prepare --spec run.yaml`."""

import sys

from jobs.entrypoint import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("prepare"))
