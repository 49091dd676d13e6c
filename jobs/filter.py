"""Container entrypoint of the filter stage: `python -m jobs.filter --spec run.yaml`."""

import sys

from jobs.entrypoint import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("filter"))
