"""Container entrypoint of the sft stage: `python -m jobs.sft --spec run.yaml`."""

import sys

from jobs.entrypoint import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("sft"))
