"""Container entrypoint of the evaluate stage: `python -m jobs.evaluate --spec run.yaml`."""

import sys

from jobs.entrypoint import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("evaluate"))
