"""Models: the tiny offline Qwen2.5-VL builder and the one loader every stage uses."""

from transformers.utils import logging as _hf_logging

# Stages draw their own progress bars; transformers' per-file bars would interleave with them.
_hf_logging.disable_progress_bar()
