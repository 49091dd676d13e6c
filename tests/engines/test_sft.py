"""SFT on teacher trajectories: the label mask on a real tokenized sample, the data order, the schedule,
and a resumed run that reproduces an uninterrupted one."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from egt.engines.hf import HFJudge, JudgeInput
from egt.engines.sft import (
    SFTExample,
    TrainState,
    example_order,
    lr_at,
    sft_loss,
    target_ids,
    total_steps,
    train,
)
from egt.spec import SFTSpec
from tests.engines.conftest import BLUE, GREEN, IM_END, IMAGE_PAD, RED, expected_prompt

IGNORE = -100
TRAJECTORY = (
    "<think>The image is a solid red square. Response 1 says red, which matches; Response 2 says blue, "
    "which does not. Response 1 is better.</think><answer>1</answer>"
)


def _hf_loss(
    judge: HFJudge, item: JudgeInput, trajectory: str
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """transformers' own causal-LM loss with a hand-built label mask; returns (loss, labels, input_ids)."""
    tokenizer = judge.tokenizer
    prompt = judge.processor(
        text=[expected_prompt(item)], images=item.images or None, return_tensors="pt", padding=False
    )
    prompt_ids = prompt["input_ids"][0].tolist()
    targets = [*tokenizer(trajectory, add_special_tokens=False)["input_ids"], IM_END]
    input_ids = torch.tensor([prompt_ids + targets])
    labels = torch.tensor([[IGNORE] * len(prompt_ids) + targets])
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    if item.images:
        inputs |= {"pixel_values": prompt["pixel_values"], "image_grid_thw": prompt["image_grid_thw"]}
        # Pass the token types exactly when the engine does (see MROPE_BUG in test_hf), so this test
        # pins the label mask either way.
        if "mm_token_type_ids" in judge.encode([item]):
            types = prompt["mm_token_type_ids"]
            inputs["mm_token_type_ids"] = torch.cat(
                [types, torch.zeros((1, len(targets)), dtype=types.dtype)], 1
            )
    with torch.no_grad():
        loss = judge.model(**inputs).loss
    return loss, labels[0], input_ids[0].tolist()


def test_sft_loss_equals_hf_loss_with_prompt_and_image_tokens_masked(judge):
    item = JudgeInput([RED], "What colour is the square?", "It is red.", "It is blue.")
    expected, labels, input_ids = _hf_loss(judge, item, TRAJECTORY)
    tokenizer = judge.tokenizer

    # The hand-built mask: exactly the assistant turn is labelled, never an image or template token.
    labelled = [token for token in labels.tolist() if token != IGNORE]
    assert tokenizer.decode(labelled) == TRAJECTORY + "<|im_end|>"
    assert IMAGE_PAD in input_ids and IMAGE_PAD not in labelled
    assert input_ids.count(IMAGE_PAD) == 4
    first = labels.tolist().index(labelled[0])
    assert tokenizer.decode(input_ids[:first]).endswith("<|im_end|>\n<|im_start|>assistant\n")

    example = SFTExample(item, target_ids(judge, TRAJECTORY))
    assert example.target_ids == labelled
    with torch.no_grad():
        got = sft_loss(judge, [example])
    assert float(got) == pytest.approx(float(expected), abs=1e-5)

    # Sensitivity: labelling the assistant header too, or dropping the end-of-turn token, would be visible.
    with torch.no_grad():
        wider = sft_loss(
            judge, [SFTExample(item, tokenizer("assistant\n")["input_ids"] + example.target_ids)]
        )
        shorter = sft_loss(judge, [SFTExample(item, example.target_ids[:-1])])
    assert abs(float(wider) - float(expected)) > 1e-3
    assert abs(float(shorter) - float(expected)) > 1e-3


def test_micro_batch_loss_is_the_token_mean_over_padded_examples(judge):
    """Two examples, prompts of different lengths (left padding) and targets of different lengths."""
    first = (
        JudgeInput([BLUE, GREEN], "Which two colours appear, in order?", "Blue, green.", "Green."),
        TRAJECTORY,
    )
    second = (JudgeInput([], "Say hi.", "Hi.", "Bye."), "<think>Short.</think><answer>2</answer>")
    losses, counts = [], []
    for item, trajectory in (first, second):
        loss, labels, _ = _hf_loss(judge, item, trajectory)
        losses.append(float(loss))
        counts.append(int((labels != IGNORE).sum()))
    expected = sum(loss * count for loss, count in zip(losses, counts, strict=True)) / sum(counts)
    examples = [SFTExample(item, target_ids(judge, trajectory)) for item, trajectory in (first, second)]
    with torch.no_grad():
        got = sft_loss(judge, examples)
    assert float(got) == pytest.approx(expected, abs=1e-5)
    assert abs(losses[0] - losses[1]) > 1e-2  # an unweighted mean of the two would differ


def test_example_order():
    order = example_order(10, 2, seed=3)
    assert len(order) == 20
    assert sorted(order[:10]) == list(range(10)) and sorted(order[10:]) == list(range(10))
    assert order[:10] != order[10:]  # a fresh permutation per epoch
    assert order[:10] != list(range(10))
    assert example_order(10, 2, seed=3) == order
    assert example_order(10, 2, seed=4) != order
    # Fractional epochs cut the last permutation; the order before the cut does not depend on it.
    partial = example_order(10, 1.5, seed=3)
    assert partial == order[:15]
    assert len(set(partial[10:])) == 5
    assert example_order(10, 0.25, seed=3) == order[:2]  # round(2.5) = 2 (banker's rounding)


def test_lr_at():
    peak = 1e-3
    # 10 warmup steps out of 100.
    assert lr_at(0, 100, peak, 0.1) == pytest.approx(peak / 10)
    assert lr_at(4, 100, peak, 0.1) == pytest.approx(peak / 2)
    assert lr_at(9, 100, peak, 0.1) == pytest.approx(peak)
    assert lr_at(10, 100, peak, 0.1) == pytest.approx(peak)  # cosine starts at the peak
    assert lr_at(55, 100, peak, 0.1) == pytest.approx(peak / 2)  # halfway through the decay
    assert lr_at(99, 100, peak, 0.1) == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert lr_at(100, 100, peak, 0.1) == pytest.approx(0.0, abs=1e-15)
    decay = [lr_at(step, 100, peak, 0.1) for step in range(10, 100)]
    assert all(a > b for a, b in itertools.pairwise(decay))
    # No warmup: the first step already runs at the peak. A tiny ratio still warms up for one step.
    assert lr_at(0, 100, peak, 0.0) == pytest.approx(peak)
    assert lr_at(0, 100, peak, 0.001) == pytest.approx(peak)


# ---- the training loop ---------------------------------------------------------------------------

COLOURS = {"red": RED, "blue": BLUE, "green": GREEN}
# 8 examples, 2 per step in micro-batches of 1 (so gradients accumulate): 4 optimizer steps.
SPEC = SFTSpec(
    epochs=1,
    global_batch_size=2,
    micro_batch_size=1,
    learning_rate=3e-3,
    warmup_ratio=0.25,
    seed=5,
    gradient_checkpointing=False,
)
RESUME_AT = 2


def _examples(judge: HFJudge) -> list[SFTExample]:
    examples = []
    for index in range(8):
        colour, other = list(COLOURS)[index % 3], list(COLOURS)[(index + 1) % 3]
        right = 1 + index % 2
        responses = (
            (f"It is {colour}.", f"It is {other}.") if right == 1 else (f"It is {other}.", f"It is {colour}.")
        )
        item = JudgeInput([COLOURS[colour]], f"What colour is picture {index}?", *responses)
        trajectory = (
            f"<think>The picture is {colour}. Response {right} is better.</think><answer>{right}</answer>"
        )
        examples.append(SFTExample(item, target_ids(judge, trajectory)))
    return examples


def _fresh(sharp_dir) -> tuple[HFJudge, torch.optim.Optimizer]:
    judge = HFJudge.from_dir(sharp_dir, device="cpu")
    return judge, torch.optim.AdamW(judge.model.parameters(), lr=SPEC.learning_rate, weight_decay=0.0)


def _mean_loss(judge: HFJudge, examples: list[SFTExample]) -> float:
    with torch.no_grad():
        return float(sft_loss(judge, examples))


def test_train_lowers_the_loss_and_resumes_exactly(sharp_dir, tmp_path):
    steps = total_steps(8, SPEC)
    assert steps == 4

    # The uninterrupted run; at step RESUME_AT its on_step writes the checkpoint a resumed run starts from.
    checkpoint = tmp_path / "sft.pt"
    judge, optimizer = _fresh(sharp_dir)
    examples = _examples(judge)
    before = _mean_loss(judge, examples)
    seen: list[int] = []

    def on_step(s: TrainState) -> None:
        seen.append(s.step)
        if s.step == RESUME_AT:
            payload = {
                "model": judge.model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": s.step,
                "losses": list(s.losses),
            }
            torch.save(payload, checkpoint)

    state = train(judge, examples, SPEC, TrainState(0, []), optimizer, on_step=on_step)
    assert seen == [1, 2, 3, 4] and state.step == steps and len(state.losses) == steps
    assert not judge.model.training
    after = _mean_loss(judge, examples)
    assert after < before - 0.5, (before, after)
    assert state.losses[-1] < state.losses[0]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr_at(steps - 1, steps, SPEC.learning_rate, 0.25))
    reference_losses = list(state.losses)
    trained = {name: tensor.clone() for name, tensor in judge.model.state_dict().items()}
    del judge, optimizer

    # Resumed in a fresh model and optimizer from the saved state dicts.
    judge, optimizer = _fresh(sharp_dir)
    payload = torch.load(checkpoint, weights_only=False)
    judge.model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    resumed: list[int] = []
    state = train(
        judge,
        examples,
        SPEC,
        TrainState(payload["step"], payload["losses"]),
        optimizer,
        on_step=lambda s: resumed.append(s.step),
    )
    assert resumed == [3, 4] and state.step == steps
    assert state.losses == pytest.approx(reference_losses, abs=1e-5)
    for name, tensor in judge.model.state_dict().items():
        torch.testing.assert_close(tensor, trained[name], atol=1e-5, rtol=0)


def test_train_rejects_a_global_batch_that_micro_batches_do_not_divide(judge):
    spec = SPEC.model_copy(update={"global_batch_size": 4, "micro_batch_size": 3})
    with pytest.raises(ValueError, match="multiple"):
        train(
            judge, [], spec, TrainState(0, []), torch.optim.SGD([torch.zeros(1, requires_grad=True)]), print
        )
