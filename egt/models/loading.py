"""Loading a judge model and its processor: the one code path for the tiny model and Qwen2.5-VL-7B.

The processor handles images and text only. The stock ``Qwen2_5_VLProcessor`` also requires a video
processor, which in transformers 5.x needs torchvision, and the torchvision wheels reachable from CPU
machines are CUDA builds that fail to import beside CPU torch. The judge never sees video, so an
image-only subclass keeps one code path for CPU tests and GPU clusters (where ``AutoImageProcessor``
then picks the torchvision backend; both backends produce the same pixel values).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
)
from transformers.processing_utils import ProcessorMixin

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ImageTextProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor without the video branch (see the module docstring)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)


def load_processor(model_dir: str | Path) -> ImageTextProcessor:
    """The processor saved beside a model (tokenizer + image processor + chat template)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"  # generation appends on the right
    image_processor = AutoImageProcessor.from_pretrained(model_dir)
    return ImageTextProcessor(image_processor, tokenizer, chat_template=tokenizer.chat_template)


def load_model(model_dir: str | Path, dtype: str = "float32", device: str = "cpu"):
    """A Qwen2.5-VL judge from a Hugging Face folder, in eval mode on ``device``."""
    if dtype not in DTYPES:
        raise ValueError(f"model dtype {dtype!r} is not one of {sorted(DTYPES)}")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=DTYPES[dtype])
    return model.to(device).eval()
