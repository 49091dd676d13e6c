"""The fault-and-input matrix (docs/reliability.md): each row a fault or a bad input, what the stages
do about it, and what they keep. Rows whose behaviour lives elsewhere are listed in that document
with their tests."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from egt.runner import run_local
from egt.stages import probe as probe_stage
from egt.storage.manifest import read_manifest
from egt.storage.records import read_records
from egt.storage.store import open_store
from tests.stages.conftest import make_run, start_stage_pod

pytestmark = pytest.mark.slow


def quiet(run, workdir: Path, **kwargs):
    return run_local(run, workdir, progress=False, echo=lambda *_: None, **kwargs)


def test_a_probe_resumed_with_another_shard_size_probes_every_sample(
    small_run_doc, tmp_path: Path, monkeypatch
) -> None:
    """Row 1: shard_size is speed-only (not in the stage's identity), so an attempt interrupted with
    shards of 4 resumes with shards of 8. The finished shard 0 holds samples 0-3, but shard 0 is now
    0-7: it is probed again, not reused by its index (which kept 8 of the 12 samples)."""
    run = make_run(small_run_doc, str(tmp_path / "store"))
    quiet(run, tmp_path / "work", stop="sft")
    real, calls = probe_stage.probe_records, []

    def interrupted(judge, records, *args, **kwargs):
        calls.append(len(records))
        if len(calls) == 2:
            raise RuntimeError("node lost")
        return real(judge, records, *args, **kwargs)

    monkeypatch.setattr(probe_stage, "probe_records", interrupted)
    with pytest.raises(RuntimeError, match="node lost"):
        quiet(run, tmp_path / "work", start="probe", stop="probe")
    small_run_doc["spec"]["probe"]["shard_size"] = 8
    resumed = make_run(small_run_doc, str(tmp_path / "store"))
    quiet(resumed, tmp_path / "work", start="probe", stop="probe")

    store = open_store(str(tmp_path / "store"))
    probed = read_records(store, "small/probe/probed.jsonl")
    pool = read_records(store, "small/prepare/data/rl.jsonl")
    assert [r["id"] for r in probed] == [r["id"] for r in pool]
    assert read_manifest(store, "small", "probe").counts["samples"] == 12
    assert calls[2:] == [8, 4]  # the old 4-sample shard 0 was not taken for the new 8-sample one


@dataclass
class TeacherGoingDown:
    """The offline teacher server behind a key, which goes away after annotate's first shard."""

    key: str
    base_url: str
    port: int
    asked: list[list[str]]  # the record ids of each annotate call

    def back(self):
        """The server again, on the same address (the run's config is unchanged)."""
        from egt.teachers.server import serve

        return serve(port=self.port, api_key=self.key)[0]


def teacher_down_after_first_shard(doc: dict, monkeypatch, key: str = "local") -> TeacherGoingDown:
    from egt.stages import annotate as annotate_stage
    from egt.teachers.server import serve

    monkeypatch.setenv("EGT_TEST_TEACHER_KEY", key)
    server, _ = serve(api_key=key)
    doc["spec"]["annotate"]["teacher"] = {
        "kind": "openai", "base_url": server.base_url, "model": "scripted",
        "api_key_env": "EGT_TEST_TEACHER_KEY", "max_retries": 0, "timeout_seconds": 5,
    }  # fmt: skip
    teacher = TeacherGoingDown(key, server.base_url, server.server_address[1], [])
    real = annotate_stage.annotate

    def outage_after_first_shard(records, *args):
        teacher.asked.append([r["id"] for r in records])
        out = real(records, *args)
        if len(teacher.asked) == 1:
            server.close()  # the endpoint goes away
        return out

    monkeypatch.setattr(annotate_stage, "annotate", outage_after_first_shard)
    return teacher


def test_a_teacher_outage_fails_annotate_keeping_the_answers_and_a_rerun_asks_only_the_rest(
    small_run_doc, tmp_path: Path, monkeypatch
) -> None:
    """Row 2: the teacher goes down after the first shard. Its failed requests are not "done": the
    stage fails naming the endpoint and the error, no manifest is written, the 8 answered pairs are
    kept, and the rerun (teacher back) asks for exactly the other 8."""
    from egt.stages import annotate as annotate_stage

    teacher = teacher_down_after_first_shard(small_run_doc, monkeypatch)
    run = make_run(small_run_doc, str(tmp_path / "store"))
    with pytest.raises(annotate_stage.TeacherUnavailableError) as failed:
        quiet(run, tmp_path / "work", stop="annotate")
    message = str(failed.value)
    assert f"the teacher at {teacher.base_url} (scripted) failed for good on 8 of 16 pairs" in message
    assert "the 8 answered pairs are kept" in message and "record 'sft-000008'" in message
    store = open_store(str(tmp_path / "store"))
    assert read_manifest(store, "small", "annotate") is None  # not recorded as finished

    back = teacher.back()
    try:
        teacher.asked.clear()
        _, outcomes = quiet(run, tmp_path / "work", stop="annotate")
    finally:
        back.close()
    assert [o.state for o in outcomes] == ["skipped", "succeeded"]
    assert teacher.asked == [[f"sft-{k:06d}" for k in range(8, 16)]]  # only the pairs that failed
    manifest = read_manifest(store, "small", "annotate")
    assert manifest.counts["teacher_errors"] == 0 and manifest.unfinished == 0
    assert manifest.counts["pairs"] == 16


def test_within_the_error_budget_annotate_finishes_and_the_next_run_retries_the_failed_pairs(
    small_run_doc, tmp_path: Path, monkeypatch
) -> None:
    """Row 2, with annotate.teacher_error_budget: the stage finishes without the failed pairs; a
    rerun with the teacher still down changes nothing (SFT, named by annotate's manifest, does not
    run again); a rerun with it back asks for exactly them."""
    teacher = teacher_down_after_first_shard(small_run_doc, monkeypatch)
    small_run_doc["spec"]["annotate"]["teacher_error_budget"] = 0.5
    run = make_run(small_run_doc, str(tmp_path / "store"))
    quiet(run, tmp_path / "work", stop="annotate")
    store = open_store(str(tmp_path / "store"))
    first = store.read_bytes("small/annotate/manifest.json")
    manifest = read_manifest(store, "small", "annotate")
    assert manifest.unfinished == 8 and manifest.counts["teacher_errors"] == 8

    teacher.asked.clear()
    _, still_down = quiet(run, tmp_path / "work", stop="annotate")
    failed = [[f"sft-{k:06d}" for k in range(8, 16)]]
    assert teacher.asked == failed and still_down[-1].state == "succeeded"
    assert store.read_bytes("small/annotate/manifest.json") == first  # nothing changed: kept as it was

    back = teacher.back()
    try:
        teacher.asked.clear()
        quiet(run, tmp_path / "work", stop="annotate")
    finally:
        back.close()
    assert teacher.asked == failed
    assert read_manifest(store, "small", "annotate").unfinished == 0
    _, done = quiet(run, tmp_path / "work", stop="annotate")
    assert [o.state for o in done] == ["skipped", "skipped"]


def native_dataset(folder: Path, pools: dict[str, int]) -> dict:
    """Synthetic pairs written as a user's own native dataset (images relative to the files), and
    the data block of a run reading them."""
    import json

    from egt.data.synthetic import generate_split

    data = {}
    for name, n in pools.items():
        records = generate_split(folder, name, n, 1)
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        data[name] = {"uri": str(folder / f"{name}.jsonl")}
    return {"sft": data["sft"], "rl": data["rl"], "eval": {"held": data["eval"]}}


def rewrite(path: Path, change) -> None:
    import json

    records = [json.loads(line) for line in path.read_text().splitlines()]
    change(records)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def own_data_run(small_run_doc: dict, tmp_path: Path, data: dict):
    small_run_doc["spec"]["data"] = data
    small_run_doc["spec"]["annotate"]["teacher"] = {
        "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "never-asked",
    }  # fmt: skip
    return make_run(small_run_doc, str(tmp_path / "store"))


def test_image_references_resolve_only_inside_the_datasets_root(small_run_doc, tmp_path: Path) -> None:
    """Row 3: an absolute path, '..', file:// and another bucket are refused at prepare, every one
    named with its record, before anything is read or sent to a teacher."""
    data = native_dataset(tmp_path / "data", {"sft": 4, "rl": 4, "eval": 2})
    (tmp_path / "secret.png").write_bytes((tmp_path / "data" / "images").iterdir().__next__().read_bytes())
    outside = [
        "../secret.png",
        str(tmp_path / "secret.png"),
        f"file://{tmp_path}/secret.png",
        "s3://other/x.png",
    ]

    def reach_out(records):
        for record, ref in zip(records, outside, strict=True):
            record["images"] = [ref]

    rewrite(tmp_path / "data" / "rl.jsonl", reach_out)
    run = own_data_run(small_run_doc, tmp_path, data)
    with pytest.raises(ValueError) as refused:
        quiet(run, tmp_path / "work", stop="prepare")
    message = str(refused.value)
    assert "4 problem(s) in 4 records" in message
    for row, ref in enumerate(outside, start=1):
        assert (
            f"row {row} (id 'rl-00000{row - 1}'): media path {ref!r} is absolute or leaves the data root"
            in message
        )
    assert read_manifest(open_store(str(tmp_path / "store")), "small", "prepare") is None

    # Inside the root (here a wider root given in the spec) the same file is fine.
    rewrite(tmp_path / "data" / "rl.jsonl", lambda rs: [r.update(images=["secret.png"]) for r in rs])
    data["rl"]["root"] = str(tmp_path)
    small_run_doc["spec"]["data"] = data
    quiet(own_data_run(small_run_doc, tmp_path, data), tmp_path / "work", stop="prepare")
    store = open_store(str(tmp_path / "store"))
    prepared = read_records(store, "small/prepare/data/rl.jsonl")
    assert {r["images"][0] for r in prepared} == {(tmp_path / "secret.png").as_uri()}


def test_bad_records_and_images_are_all_named_at_prepare(small_run_doc, tmp_path: Path) -> None:
    """Row 5: an undecodable image in the RL pool, wrong types and empty images are found at prepare
    (not at probe after SFT), every bad record of the dataset in one error naming file, row, id,
    reference and reason."""
    data = native_dataset(tmp_path / "data", {"sft": 4, "rl": 6, "eval": 2})
    broken = tmp_path / "data" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")

    def spoil(records):
        records[0]["images"] = ["broken.png"]
        records[1]["images"] = [123]
        records[2]["label"] = True
        records[3]["query"] = None
        records[4]["images"] = []
        records[5]["images"] = ["missing.png"]

    rewrite(tmp_path / "data" / "rl.jsonl", spoil)
    with pytest.raises(ValueError) as refused:
        quiet(own_data_run(small_run_doc, tmp_path, data), tmp_path / "work", stop="prepare")
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'data' / 'rl.jsonl'}: 6 problem(s) in 6 records:")
    for line in (
        "row 1 (id 'rl-000000'): image 'broken.png': the image does not decode: cannot identify image file",
        "row 2 (id 'rl-000001'): image reference 123 is not a non-empty string",
        "row 3 (id 'rl-000002'): label is True; expected 1 or 2",
        "row 4 (id 'rl-000003'): query must be a string, got NoneType",
        "row 5 (id 'rl-000004'): no images",
        "row 6 (id 'rl-000005'): image 'missing.png' not found under",
    ):
        assert line in message, message


def test_replacing_an_image_reruns_what_depends_on_the_dataset(small_run_doc, tmp_path: Path) -> None:
    """Row 5: image bytes take part in the dataset's identity, not only the records file's."""
    data = native_dataset(tmp_path / "data", {"sft": 4, "rl": 4, "eval": 2})
    run = own_data_run(small_run_doc, tmp_path, data)
    quiet(run, tmp_path / "work", stop="prepare")
    _, again = quiet(run, tmp_path / "work", stop="prepare")
    assert again[0].state == "skipped"
    image = sorted((tmp_path / "data" / "images").rglob("*.png"))[0]
    from PIL import Image

    Image.new("RGB", (56, 56), (1, 2, 3)).save(image)
    _, replaced = quiet(run, tmp_path / "work", stop="prepare")
    assert replaced[0].state == "succeeded"


@pytest.mark.parametrize(
    ("section", "field", "value", "expected"),
    [
        ("sft", "learning_rate", float("inf"), "spec.sft.learning_rate: Input should be a finite number"),
        ("sft", "learning_rate", 1e30, "spec.sft.learning_rate: Input should be less than or equal to 1"),
        ("rl", "alpha", float("nan"), "spec.rl.alpha: Input should be a finite number"),
        ("rl", "temperature", float("nan"), "spec.rl.temperature: Input should be a finite number"),
        ("sft", "max_grad_norm", float("nan"), "spec.sft.max_grad_norm: Input should be a finite number"),
        ("sft", "epochs", float("inf"), "spec.sft.epochs: Input should be a finite number"),
        ("curate", "keep", 10**12, "spec.curate.keep: Input should be less than or equal to 10000000"),
        ("store", "uri", "s3:///runs", "spec.store.uri: Value error, 's3:///runs' has no bucket"),
    ],
)
def test_the_spec_refuses_non_finite_and_absurd_numbers(small_run_doc, section, field, value, expected):
    """Row 4: numbers no setting means are refused before anything runs."""
    from egt.spec import SpecError, parse_run

    small_run_doc["spec"].setdefault(section, {})[field] = value
    with pytest.raises(SpecError) as refused:
        parse_run(small_run_doc, "run.yaml")
    assert expected in str(refused.value)


def test_training_stops_at_the_first_non_finite_step_and_the_earlier_model_is_kept(
    small_run_doc, tmp_path: Path, monkeypatch
) -> None:
    """Row 4: SFT trained once; the config changes and the loss turns NaN at step 2 (injected).
    Training stops at that step, named, before it is recorded or checkpointed: no NaN model, no
    manifest of the new config, the step-1 checkpoint kept. The earlier model and manifest are
    still there (they were deleted the moment the config changed), so reverting skips SFT."""
    import math

    from egt.engines import sft as sft_engine
    from egt.engines.finite import NonFiniteTrainingError

    small_run_doc["spec"]["sft"]["global_batch_size"] = 4  # 16 pairs: several steps
    good = make_run(small_run_doc, str(tmp_path / "store"))
    quiet(good, tmp_path / "work", stop="sft")
    store = open_store(str(tmp_path / "store"))
    trained = read_manifest(store, "small", "sft")
    model_files = {key: store.read_bytes(key) for key in store.list("small/sft/model")}

    small_run_doc["spec"]["sft"]["learning_rate"] = 1e-2
    changed = make_run(small_run_doc, str(tmp_path / "store"))
    real, calls = sft_engine.token_nll_sum, []

    def nan_from_step_2(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * math.nan if len(calls) > 1 else loss  # one micro-batch per step here

    monkeypatch.setattr(sft_engine, "token_nll_sum", nan_from_step_2)
    with pytest.raises(NonFiniteTrainingError, match=r"step 2 of 4: loss nan"):
        quiet(changed, tmp_path / "work", start="sft", stop="sft")
    assert store.read_json("small/sft/checkpoints/latest.json")["tag"] == "step-0000001"
    assert read_manifest(store, "small", "sft") == trained  # the earlier result, whole
    assert {key: store.read_bytes(key) for key in store.list("small/sft/model")} == model_files

    monkeypatch.setattr(sft_engine, "token_nll_sum", real)
    _, reverted = quiet(good, tmp_path / "work", start="sft", stop="sft")
    assert [o.state for o in reverted] == ["skipped"]


def test_two_runners_of_one_stage_one_works_the_other_stops_naming_it(small_run_doc, tmp_path: Path) -> None:
    """Row 6: two `egt run --force annotate` at once on the same run and store. Both did the work,
    and deleted each other's files; now the second finds the first's lease renewed and stops,
    naming it, and the first finishes a complete stage."""
    import os
    import subprocess
    import sys

    import yaml

    from egt.teachers.server import serve

    server, _ = serve(latency_s=0.25)  # 16 pairs one at a time: annotate takes ~4 s
    try:
        small_run_doc["spec"]["annotate"]["teacher"] = {
            "kind": "openai", "base_url": server.base_url, "model": "scripted",
            "api_key_env": "EGT_TEST_TEACHER_KEY", "max_concurrency": 1,
        }  # fmt: skip
        run = make_run(small_run_doc, str(tmp_path / "store"))
        quiet(run, tmp_path / "work", stop="prepare")
        spec_file = tmp_path / "run.yaml"
        spec_file.write_text(yaml.safe_dump(run.model_dump(mode="json")))
        env = {**os.environ, "EGT_TEST_TEACHER_KEY": "local", "EGT_LEASE_SECONDS": "1.5"}
        command = [sys.executable, "-m", "egt.cli", "run", str(spec_file), "--local", "-q", "--no-report",
                   "--from", "annotate", "--until", "annotate", "--force", "annotate"]  # fmt: skip
        runners = []
        for name in ("a", "b"):
            runners.append(
                subprocess.Popen(
                    [*command, "--workdir", str(tmp_path / name)],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
            time.sleep(0.5)
        results = [(r.wait(timeout=120), *r.communicate()) for r in runners]
    finally:
        server.close()
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    stopped = next(err for code, _, err in results if code == 1)
    assert "stage annotate of run small is being run by" in stopped and f"pid {runners[0].pid}" in stopped
    store = open_store(str(tmp_path / "store"))
    assert read_manifest(store, "small", "annotate").counts["pairs"] == 16
    assert len(read_records(store, "small/annotate/annotated.jsonl")) == 16
    assert not store.exists("small/annotate/lease.json")


PROBE_COLUMNS = ("id", "answer_entropy", "sentence_entropy", "probe_prediction", "probe_correct")


def probe_columns(records: list[dict]) -> list[tuple]:
    return [tuple(r.get(c) for c in PROBE_COLUMNS) for r in records]


def test_a_probe_killed_with_sigkill_resumes_to_the_same_output(
    small_run_doc, tmp_path: Path, monkeypatch
) -> None:
    """Holds already, pinned: a probe pod killed (SIGKILL) after a shard; the rerun keeps the
    finished shards, takes over the dead runner's lease once it expires, and writes exactly what an
    uninterrupted probe writes."""
    import signal

    small_run_doc["spec"]["data"]["synthetic"]["rl_size"] = 24
    small_run_doc["spec"]["probe"]["shard_size"] = 2
    reference = make_run(small_run_doc, str(tmp_path / "reference"))
    quiet(reference, tmp_path / "work-reference", stop="probe")
    expected = probe_columns(
        read_records(open_store(str(tmp_path / "reference")), "small/probe/probed.jsonl")
    )

    run = make_run(small_run_doc, str(tmp_path / "store"))
    quiet(run, tmp_path / "work", stop="sft")
    monkeypatch.setenv("EGT_LEASE_SECONDS", "2")
    pod = start_stage_pod("probe", run, tmp_path)
    first_shard = tmp_path / "store" / "small" / "probe" / "shards" / "shard-00000.jsonl"
    deadline = time.monotonic() + 300
    while not first_shard.exists() and pod.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    pod.send_signal(signal.SIGKILL)
    pod.wait()
    store = open_store(str(tmp_path / "store"))
    assert first_shard.exists() and read_manifest(store, "small", "probe") is None  # killed mid-stage
    assert store.exists("small/probe/lease.json")  # a dead runner's lease, never released

    _, outcomes = quiet(run, tmp_path / "work", start="probe", stop="probe")
    assert [o.state for o in outcomes] == ["succeeded"]
    assert probe_columns(read_records(store, "small/probe/probed.jsonl")) == expected


def test_an_s3_outage_mid_stage_fails_it_cleanly_and_the_rerun_resumes(
    small_run_doc, s3_server, tmp_path: Path, monkeypatch
) -> None:
    """Holds already, pinned: S3 goes away while the probe runs (after its first shard is stored).
    The stage fails naming the endpoint, writes no manifest; with S3 back the rerun probes only the
    missing shards and writes what an uninterrupted probe writes."""
    import uuid
    from urllib.parse import urlsplit

    from tests.fixtures.tcp_proxy import TcpProxy

    reference = make_run(small_run_doc, str(tmp_path / "reference"))
    quiet(reference, tmp_path / "work-reference", stop="probe")
    expected = probe_columns(
        read_records(open_store(str(tmp_path / "reference")), "small/probe/probed.jsonl")
    )

    real_s3 = urlsplit(s3_server.endpoint_url)
    proxy = TcpProxy((real_s3.hostname, real_s3.port))
    monkeypatch.setenv("EGT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EGT_LEASE_SECONDS", "2")  # a lease it could not release expires
    uri = f"{s3_server.uri}/{uuid.uuid4().hex}"
    run = make_run(small_run_doc, uri, proxy.url)
    try:
        quiet(run, tmp_path / "work", stop="sft")
        real, calls, outages = probe_stage.probe_records, [], [True]

        def outage_during_shard_2(judge, records, *args, **kwargs):
            calls.append([r["id"] for r in records])
            if len(calls) == 2 and outages:
                outages.pop()
                proxy.cut()  # S3 goes away while shard 1 is probed
            return real(judge, records, *args, **kwargs)

        monkeypatch.setattr(probe_stage, "probe_records", outage_during_shard_2)
        with pytest.raises(Exception, match=f"127.0.0.1:{proxy.port}") as failed:
            quiet(run, tmp_path / "work", start="probe", stop="probe")
        print(f"the outage's error: {type(failed.value).__name__}: {failed.value}")
        proxy.restore()
        store = open_store(uri, proxy.url)
        assert read_manifest(store, "small", "probe") is None
        assert store.list("small/probe/shards") == ["small/probe/shards/shard-00000.jsonl"]
        calls.clear()
        _, outcomes = quiet(run, tmp_path / "work", start="probe", stop="probe")
        assert [o.state for o in outcomes] == ["succeeded"]
        assert [ids[0] for ids in calls] == ["rl-000004", "rl-000008"]  # shard 0 was not redone
        assert probe_columns(read_records(store, "small/probe/probed.jsonl")) == expected
    finally:
        proxy.close()


def test_no_secret_reaches_a_log_an_artifact_a_manifest_or_a_metric(
    small_run_doc, s3_server, pushgateway, pushgateway_metrics, tmp_path: Path, monkeypatch, caplog, capfd
) -> None:
    """Holds already, pinned: a run on S3 with a teacher behind a key, pushing metrics. The teacher
    key and the S3 secret are in the environment only; after prepare, annotate (one teacher outage
    retried) and SFT, neither is in any object of the store, any log line or output, or the
    Pushgateway's metrics."""
    import logging
    import os
    import uuid

    from egt.stages import annotate as annotate_stage
    from tests.fixtures.s3 import SECRET_KEY

    teacher_key = f"sk-{uuid.uuid4().hex}"
    monkeypatch.setenv("EGT_CACHE_DIR", str(tmp_path / "cache"))
    teacher = teacher_down_after_first_shard(small_run_doc, monkeypatch, key=teacher_key)
    small_run_doc["spec"]["metrics"] = {"pushgateway": pushgateway}
    run = make_run(small_run_doc, f"{s3_server.uri}/{uuid.uuid4().hex}", s3_server.endpoint_url)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(annotate_stage.TeacherUnavailableError):
            quiet(run, tmp_path / "work", stop="sft")
        back = teacher.back()
        try:
            quiet(run, tmp_path / "work", stop="sft")
        finally:
            back.close()
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == SECRET_KEY  # what the store used

    store = open_store(run.spec.store.uri, run.spec.store.endpoint_url)
    keys = store.list("")
    assert any(k.endswith("sft/manifest.json") for k in keys) and any("annotate/shards" in k for k in keys)
    printed = capfd.readouterr()
    places = {
        "log": caplog.text,
        "stdout/stderr": printed.out + printed.err,
        "metrics": pushgateway_metrics(),
        **{key: store.read_bytes(key).decode("utf-8", "replace") for key in keys if not key.endswith(".png")},
    }
    for secret in (teacher_key, SECRET_KEY):
        leaked = [where for where, text in places.items() if secret in text]
        assert not leaked, (secret[:6], leaked)
    assert 'run="small"' in places["metrics"]  # the metrics were pushed, and looked at


def test_a_pushgateway_that_hangs_does_not_hold_the_stages_up(small_run_doc, tmp_path: Path, caplog) -> None:
    """Row 7 at the stage level: every SFT step pushes, to a gateway that accepts and never answers.
    The steps go on; only the stage's last push waits, once per stage, for the push timeout."""
    import logging
    import socket

    from egt.metrics import PUSH_TIMEOUT_S

    with socket.socket() as hanging:
        hanging.bind(("127.0.0.1", 0))
        hanging.listen()
        small_run_doc["spec"]["metrics"] = {"pushgateway": f"127.0.0.1:{hanging.getsockname()[1]}"}
        small_run_doc["spec"]["sft"] |= {"global_batch_size": 2, "micro_batch_size": 2}  # a push every step
        run = make_run(small_run_doc, str(tmp_path / "store"))
        began = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="egt.metrics"):
            _, outcomes = quiet(run, tmp_path / "work", stop="sft")
        took = time.monotonic() - began
    assert [o.state for o in outcomes] == ["succeeded"] * 3
    sft = next(o for o in outcomes if o.stage == "sft")
    assert sft.manifest.counts["steps"] >= 6  # (the pairs the teacher agreed on) / 2
    # Three stages' last pushes may each wait out the timeout; 8 blocking step pushes would add 8 more.
    assert took < 3 * 2 * PUSH_TIMEOUT_S + 60, took
    assert "could not push metrics" in caplog.text
