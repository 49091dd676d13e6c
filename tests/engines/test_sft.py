"""SFT on teacher trajectories: the label mask on a real tokenized sample, the data order, the schedule,
and, in this process (a world of 1 on DeepSpeed), the exact gradient of a step and a resumed run that
reproduces an uninterrupted one. Several processes: test_sft_distributed."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from egt.engines.distributed import World
from egt.engines.hf import HFJudge, JudgeInput
from egt.engines.sft import (
    SFTExample,
    TrainState,
    accumulation_steps,
    example_order,
    initialize,
    load_checkpoint,
    lr_at,
    save_checkpoint,
    sft_loss,
    target_ids,
    token_nll_sum,
    total_steps,
    train,
)
from egt.spec import SFTSpec
from egt.storage.store import FileStore
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
ONE = World()  # this process alone


def _examples(judge: HFJudge) -> list[SFTExample]:
    examples = []
    for index in range(8):
        colour, other = list(COLOURS)[index % 3], list(COLOURS)[(index + 1) % 3]
        right = 1 + index % 2
        responses = (
            (f"It is {colour}.", f"It is {other}.") if right == 1 else (f"It is {other}.", f"It is {colour}.")
        )
        item = JudgeInput([COLOURS[colour]], f"What colour is picture {index}?", *responses)
        # Trajectories of different lengths: a token-weighted mean differs from a mean over examples.
        detail = " Only one response names that colour." * (index % 4)
        trajectory = (
            f"<think>The picture is {colour}.{detail} Response {right} is better.</think>"
            f"<answer>{right}</answer>"
        )
        examples.append(SFTExample(item, target_ids(judge, trajectory)))
    return examples


def _mean_loss(judge: HFJudge, examples: list[SFTExample]) -> float:
    with torch.no_grad():
        return float(sft_loss(judge, examples))


def test_token_nll_sum_is_the_mean_times_the_tokens(judge):
    examples = _examples(judge)[:3]
    tokens = sum(len(e.target_ids) for e in examples)
    with torch.no_grad():
        total = float(token_nll_sum(judge, examples))
    assert total == pytest.approx(_mean_loss(judge, examples) * tokens, rel=1e-6)


def test_a_step_is_the_token_mean_gradient_of_the_whole_global_batch(sharp_dir):
    """DeepSpeed scales what backward gets (1/accumulation, 1/world size): the engine undoes it, so the
    first step's pre-clip gradient norm is that of the plain token-mean loss over the global batch."""
    reference = HFJudge.from_dir(sharp_dir, device="cpu")
    examples = _examples(reference)
    batch = [examples[i] for i in example_order(8, SPEC.epochs, SPEC.seed)[: SPEC.global_batch_size]]
    assert len({len(e.target_ids) for e in batch}) > 1  # token weighting differs from averaging examples
    reference.model.train()
    loss = sft_loss(reference, batch)
    loss.backward()
    expected = torch.nn.utils.get_total_norm(
        [p.grad for p in reference.model.parameters() if p.grad is not None]
    )

    judge = HFJudge.from_dir(sharp_dir, device="cpu")
    engine = initialize(judge, SPEC, ONE)
    spec = SPEC.model_copy(update={"epochs": SPEC.global_batch_size / 8})  # one step
    state = train(judge, engine, examples, spec, TrainState(0, []), lambda _: None, ONE)
    assert state.losses == [pytest.approx(loss.item(), rel=1e-6)]
    assert state.grad_norms == [pytest.approx(float(expected), rel=1e-5)]
    assert float(expected) > SPEC.max_grad_norm  # and the step clipped it


def test_train_lowers_the_loss_and_resumes_exactly(sharp_dir, tmp_path, artifact_store):
    steps = total_steps(8, SPEC)
    assert steps == 4
    store, prefix = artifact_store, "run/sft/checkpoints"

    # The uninterrupted run; its on_step writes checkpoints up to step RESUME_AT, where a resumed run starts.
    judge = HFJudge.from_dir(sharp_dir, device="cpu")
    engine = initialize(judge, SPEC, ONE)
    examples = _examples(judge)
    before = _mean_loss(judge, examples)
    seen: list[int] = []

    def on_step(s: TrainState) -> None:
        seen.append(s.step)
        if s.step <= RESUME_AT:
            save_checkpoint(engine, store, prefix, s, tmp_path / "local", ONE)

    state = train(judge, engine, examples, SPEC, TrainState(0, []), on_step, ONE)
    assert seen == [1, 2, 3, 4] and state.step == steps and len(state.losses) == steps
    assert len(state.grad_norms) == steps
    assert not judge.model.training
    after = _mean_loss(judge, examples)
    assert after < before - 0.5, (before, after)
    assert state.losses[-1] < state.losses[0]
    lr = engine.optimizer.param_groups[0]["lr"]
    assert lr == pytest.approx(lr_at(steps - 1, steps, SPEC.learning_rate, 0.25))
    assert store.read_json(f"{prefix}/latest.json") == {"tag": "step-0000002", "step": 2, "world_size": 1}
    kept = {key[len(prefix) + 1 :].split("/")[0] for key in store.list(prefix)}
    assert kept == {"latest.json", "step-0000002"}  # step 1 was dropped once step 2 was complete
    assert store.exists(f"{prefix}/step-0000002/zero_pp_rank_0_mp_rank_00_optim_states.pt")
    reference = (list(state.losses), list(state.grad_norms))
    trained = {name: tensor.clone() for name, tensor in judge.model.state_dict().items()}
    del judge, engine

    # Resumed in a fresh model and engine from the store.
    judge = HFJudge.from_dir(sharp_dir, device="cpu")
    engine = initialize(judge, SPEC, ONE)
    state = load_checkpoint(engine, store, prefix, tmp_path / "local", ONE)
    assert state is not None and state.step == RESUME_AT
    resumed: list[int] = []
    state = train(judge, engine, examples, SPEC, state, lambda s: resumed.append(s.step), ONE)
    assert resumed == [3, 4] and state.step == steps
    assert state.losses == pytest.approx(reference[0], abs=1e-5)
    assert state.grad_norms == pytest.approx(reference[1], rel=1e-5)
    for name, tensor in judge.model.state_dict().items():
        torch.testing.assert_close(tensor, trained[name], atol=1e-5, rtol=0)
    assert load_checkpoint(engine, FileStore(tmp_path / "empty"), prefix, tmp_path / "local", ONE) is None


def test_a_global_batch_must_split_into_micro_batches_over_all_ranks(judge):
    assert accumulation_steps(SPEC.model_copy(update={"global_batch_size": 8}), 2) == 4
    spec = SPEC.model_copy(update={"global_batch_size": 4, "micro_batch_size": 3})
    with pytest.raises(ValueError, match=r"global_batch_size 4 .* micro_batch_size 3 × world size 1"):
        initialize(judge, spec, ONE)
    with pytest.raises(ValueError, match=r"global_batch_size 6 .* micro_batch_size 3 × world size 4"):
        accumulation_steps(spec.model_copy(update={"global_batch_size": 6}), 4)
