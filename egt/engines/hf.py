"""The transformers engine: encode judge prompts, generate, and run teacher-forced passes.

One teacher-forced pass serves three stages. Given prompts and completions (generated tokens, or
teacher trajectories), ``completion_hidden`` returns the final hidden state that predicts each
completion token. From it:

- probe computes exact full-vocabulary entropies in chunks (``egt.algorithms.entropy``), so the
  |V|×L logits are never materialized (generation-time ``output_logits`` would hold them all);
- rl computes the log-probabilities of its rollouts, with gradients;
- sft computes the NLL of the assistant tokens only: the prompt and image tokens are never scored.

Sequences are laid out ``[left padding, prompt, completion, right padding]`` so every completion
starts at the same column; Qwen2.5-VL's M-RoPE positions follow the attention mask, so padding on
both sides is fine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from transformers import GenerationConfig

from egt.judge import judge_messages
from egt.models.loading import load_model, load_processor


@dataclass
class Generation:
    """One generated completion: token ids up to and including the end-of-turn token."""

    token_ids: list[int]
    text: str  # what the model wrote, without the end-of-turn token
    pieces: list[str]  # visible text of each token (special tokens give ""); "".join(pieces) == text


@dataclass
class JudgeInput:
    """A pair as the judge sees it: images, question and two responses (never the label)."""

    images: list[Image.Image]
    question: str
    response_1: str
    response_2: str


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class HFJudge:
    """A Qwen2.5-VL judge on transformers."""

    def __init__(self, model, processor, device: str = "cpu") -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.device = device
        self.end_ids = {self.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
        self.pad_id = self.tokenizer.pad_token_id

    @classmethod
    def from_dir(cls, model_dir: str | Path, dtype: str = "float32", device: str = "auto") -> HFJudge:
        device = resolve_device(device)
        if device == "cpu" and dtype != "float32":
            dtype = "float32"  # CPU kernels for bf16 generation are slow and less exact
        return cls(load_model(model_dir, dtype, device), load_processor(model_dir), device)

    def save(self, out_dir: str | Path) -> None:
        """The model, processor and tokenizer as a Hugging Face folder (what from_dir loads)."""
        self.model.save_pretrained(out_dir)
        self.processor.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)

    # ---- prompts -------------------------------------------------------------------------------
    def prompt_text(self, item: JudgeInput) -> str:
        messages = judge_messages(item.question, item.response_1, item.response_2, len(item.images))
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, items: Sequence[JudgeInput]) -> dict[str, torch.Tensor]:
        """Left-padded prompt batch with pixel values, on the engine's device."""
        texts = [self.prompt_text(item) for item in items]
        images = [item.images for item in items]
        kwargs = {"images": images} if any(images) else {}
        # With images, the batch carries mm_token_type_ids: Qwen2.5-VL needs them to give image tokens
        # their 3-D M-RoPE positions (without them every token gets plain 1-D positions).
        batch = self.processor(
            text=texts, return_tensors="pt", padding=True, return_mm_token_type_ids=True, **kwargs
        )
        if "pixel_values" not in batch:
            batch.pop("mm_token_type_ids", None)
        return {name: value.to(self.device) for name, value in batch.items()}

    # ---- generation ----------------------------------------------------------------------------
    def generation_config(self, max_new_tokens: int, temperature: float) -> GenerationConfig:
        """Every option that shapes the next-token distribution, set: raw logits, greedy or tempered.

        Entropies and π_old are computed from the raw logits, so the tokens must come from those
        logits too. A checkpoint's own ``generation_config.json`` (Qwen2.5-VL-7B-Instruct's sets
        ``repetition_penalty``, ``top_k``, ``top_p``, ``temperature``) must not reshape them:
        :meth:`generate` also hides it from transformers, which fills every unset option from it.
        """
        sampling = temperature > 0
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else 1.0,
            # top_k only matters when sampling (greedy is the raw argmax); transformers warns on it otherwise
            top_k=0 if sampling else None,
            top_p=1.0,
            typical_p=1.0,
            epsilon_cutoff=0.0,
            eta_cutoff=0.0,
            repetition_penalty=1.0,
            encoder_repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            num_beams=1,
            num_return_sequences=1,
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.end_ids),
        )

    @torch.no_grad()
    def generate(
        self,
        items: Sequence[JudgeInput],
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[Generation]:
        """Greedy when ``temperature == 0``, else sampling from the full tempered distribution; the
        checkpoint's generation defaults never apply (:meth:`generation_config`)."""
        batch = self.encode(items)
        if seed is not None:
            torch.manual_seed(seed)
        config = self.generation_config(max_new_tokens, temperature)
        own, self.model.generation_config = self.model.generation_config, GenerationConfig()
        try:
            output = self.model.generate(**batch, generation_config=config)
        finally:
            self.model.generation_config = own
        completions = output[:, batch["input_ids"].shape[1] :].tolist()
        return [self.to_generation(ids) for ids in completions]

    def to_generation(self, ids: list[int]) -> Generation:
        """Cut a completion after its first end-of-turn token and decode it token by token."""
        for position, token in enumerate(ids):
            if token in self.end_ids:
                ids = ids[: position + 1]
                break
        pieces = decode_pieces(self.tokenizer, ids)
        return Generation(ids, "".join(pieces), pieces)

    # ---- teacher-forced pass -------------------------------------------------------------------
    def completion_hidden(
        self, items: Sequence[JudgeInput], completions: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states predicting each completion token, ``[B, T, d]``, and their mask ``[B, T]``.

        Gradients flow when called under grad mode (rl and sft); wrap in ``torch.no_grad`` to probe.
        """
        batch = self.encode(items)
        prompt_ids, prompt_mask = batch.pop("input_ids"), batch.pop("attention_mask")
        width = max(len(c) for c in completions)
        completion_ids = torch.full((len(completions), width), self.pad_id, dtype=torch.long)
        completion_mask = torch.zeros((len(completions), width), dtype=torch.long)
        for row, tokens in enumerate(completions):
            completion_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            completion_mask[row, : len(tokens)] = 1
        completion_ids, completion_mask = completion_ids.to(self.device), completion_mask.to(self.device)
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        if "mm_token_type_ids" in batch:  # completion tokens are text (type 0)
            types = batch["mm_token_type_ids"]
            batch["mm_token_type_ids"] = torch.cat([types, torch.zeros_like(completion_ids)], dim=1)
        hidden = self.model.model(
            input_ids=input_ids, attention_mask=attention_mask, **batch
        ).last_hidden_state
        start = prompt_ids.shape[1] - 1  # the last prompt position predicts the first completion token
        return hidden[:, start : start + width], completion_mask

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.model.lm_head.weight

    def completion_logprobs(
        self, items: Sequence[JudgeInput], completions: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log π(token) of each completion token, ``[B, T]`` float32, and the mask."""
        hidden, mask = self.completion_hidden(items, completions)
        logits = self.model.lm_head(hidden).float()
        targets = torch.zeros_like(mask)
        for row, tokens in enumerate(completions):
            targets[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return logprobs * mask, mask


def decode_pieces(tokenizer, ids: Sequence[int]) -> list[str]:
    """Per-token texts whose concatenation equals the decoded text (special tokens decode to "").

    Tokens are decoded from the last character boundary on: a character split across byte tokens
    (U+FFFD while incomplete) appears with the token that completes it. Each token is decoded with
    at most the few tokens of its character, so this is linear in the output length.
    """
    pieces, boundary = [], 0
    for end in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[boundary:end], skip_special_tokens=True)
        if text.endswith("\ufffd") and end < len(ids):
            pieces.append("")
            continue
        pieces.append(text)
        boundary = end
    return pieces
