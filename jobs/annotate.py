"""Container entrypoint of the annotate stage: `python -m jobs.annotate --spec run.yaml`."""

import sys

from jobs.entrypoint import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("annotate"))
