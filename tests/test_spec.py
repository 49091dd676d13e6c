"""The EGTRun spec: examples validate, errors name the field and what it allows, defaults are the paper's."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from egt.spec import STAGES, EGTRun, SpecError, dump_run, load_run, parse_run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# The run files the README points at, plus any other egtrun*.yaml (values-*.yaml are Helm values).
EXPECTED_EXAMPLES = ("egtrun-tiny.yaml", "egtrun.yaml")
EXAMPLE_NAMES = sorted({*EXPECTED_EXAMPLES, *(p.name for p in EXAMPLES.glob("egtrun*.yaml"))})

MINIMAL: dict[str, Any] = {
    "apiVersion": "egt.dev/v1alpha1",
    "kind": "EGTRun",
    "metadata": {"name": "t"},
    "spec": {"model": {"tiny": {}}, "data": {"synthetic": {}}},
}
REAL_DATA = {"sft": {"uri": "s3://b/sft.jsonl"}, "rl": {"uri": "s3://b/rl.jsonl"}}
OPENAI_TEACHER = {"kind": "openai", "base_url": "https://api.example.com/v1", "model": "gpt-4o"}


def doc(**spec_overrides: Any) -> dict[str, Any]:
    """A minimal valid document with spec sections replaced (not merged) by ``spec_overrides``."""
    document = copy.deepcopy(MINIMAL)
    document["spec"].update(copy.deepcopy(spec_overrides))
    return document


def spec_error(document: Any, source: str = "bad.yaml") -> str:
    with pytest.raises(SpecError) as caught:
        parse_run(document, source)
    return str(caught.value)


def example(name: str) -> Path:
    path = EXAMPLES / name
    if not path.exists():
        pytest.skip(f"examples/{name} does not exist yet (another change adds it)")
    return path


# --- examples and round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_validates(name):
    run = load_run(example(name))
    assert run.apiVersion == "egt.dev/v1alpha1"
    assert run.kind == "EGTRun"
    # Raw YAML against the JSON schema too: that is what the API server checks on kubectl apply.
    jsonschema.validate(yaml.safe_load(example(name).read_text()), EGTRun.model_json_schema())


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_dump_of_example_reparses_to_an_equal_model(name):
    run = load_run(example(name))
    dumped = dump_run(run)
    again = parse_run(yaml.safe_load(dumped), "dumped")
    assert again == run
    assert dump_run(again) == dumped


@pytest.mark.parametrize(
    "document",
    [
        MINIMAL,
        doc(curate={"keep": None, "percentile": 12.5, "strategy": "bucket", "bucket": "mid"}),
        doc(
            data={
                **REAL_DATA,
                "eval": {"vl-rewardbench": {"uri": "s3://b/vl.parquet", "format": "vl-rewardbench"}},
            },
            annotate={"teacher": OPENAI_TEACHER},
            model={"path": "s3://b/Qwen2.5-VL-7B-Instruct"},
            cluster={
                "resources": {"rl": {"nodes": 2, "gpus_per_node": 8}},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                "s3_secret": "egt-s3",
            },
            store={"uri": "s3://bucket/prefix", "endpoint_url": "http://seaweedfs:8333"},
        ),
    ],
    ids=["minimal", "percentile", "real-data"],
)
def test_dump_reparses_to_an_equal_model(document):
    run = parse_run(document)
    dumped = dump_run(run)
    assert parse_run(yaml.safe_load(dumped)) == run
    assert yaml.safe_load(dumped)["spec"]["sft"]["learning_rate"] == run.spec.sft.learning_rate


def test_metadata_keeps_extra_kubernetes_fields():
    document = copy.deepcopy(MINIMAL)
    document["metadata"].update(namespace="ml", labels={"team": "rm"})
    run = parse_run(document)
    assert run.name == "t"
    assert parse_run(yaml.safe_load(dump_run(run))).metadata.model_dump() == {
        "name": "t",
        "namespace": "ml",
        "labels": {"team": "rm"},
    }


# --- errors name the field and what it allows ----------------------------------------------------------


def test_wrong_literal_names_the_path_and_every_allowed_value():
    message = spec_error(doc(curate={"strategy": "lowest"}))
    assert "bad.yaml" in message
    assert "spec.curate.strategy" in message
    for allowed in ("entropy", "random", "accuracy", "bucket"):
        assert f"'{allowed}'" in message
    assert "'lowest'" in message  # what was given


def test_unknown_field_is_rejected_by_name():
    message = spec_error(doc(sft={"learning_rat": 1e-5}))
    assert "spec.sft.learning_rat" in message
    assert "not permitted" in message


@pytest.mark.parametrize(
    "where",
    [
        ("spec",),
        ("spec", "store"),
        ("spec", "rl", "referee"),
        ("spec", "cluster", "resources", "rl"),
        ("spec", "data", "synthetic"),
        (),
    ],
)
def test_unknown_fields_are_rejected_in_every_section(where):
    document = doc(store={}, cluster={"resources": {"rl": {}}}, rl={"referee": {}})
    node = document
    for key in where:
        node = node[key]
    node["typo_field"] = 1
    assert ".".join([*where, "typo_field"]) in spec_error(document)


def test_unknown_stage_in_resources_is_rejected():
    message = spec_error(doc(cluster={"resources": {"train": {}}}))
    assert "spec.cluster.resources" in message
    assert "train" in message


@pytest.mark.parametrize(
    "model",
    [
        {"path": "/models/qwen", "tiny": {}},
        {},
        {"dtype": "bfloat16"},
    ],
    ids=["both", "neither", "neither-with-dtype"],
)
def test_model_needs_exactly_one_of_path_and_tiny(model):
    message = spec_error(doc(model=model))
    assert "spec.model" in message
    assert "model.path" in message and "model.tiny" in message


@pytest.mark.parametrize(
    "curate",
    [{"keep": 100, "percentile": 10.0}, {"keep": None}],
    ids=["both", "neither"],
)
def test_curate_needs_exactly_one_of_keep_and_percentile(curate):
    message = spec_error(doc(curate=curate))
    assert "spec.curate" in message
    assert "keep" in message and "percentile" in message


@pytest.mark.parametrize("key", ["sft", "rl", "eval"])
def test_synthetic_data_excludes_real_pools(key):
    value = {"x": {"uri": "s3://b/x.jsonl"}} if key == "eval" else {"uri": "s3://b/x.jsonl"}
    message = spec_error(doc(data={"synthetic": {}, key: value}))
    assert "spec.data" in message
    assert "data.synthetic" in message


@pytest.mark.parametrize("data", [{}, {"sft": REAL_DATA["sft"]}, {"rl": REAL_DATA["rl"]}])
def test_real_data_needs_both_pools(data):
    assert "spec.data" in spec_error(doc(data=data, annotate={"teacher": OPENAI_TEACHER}))


@pytest.mark.parametrize("missing", ["base_url", "model"])
def test_openai_teacher_needs_an_endpoint(missing):
    teacher = {k: v for k, v in OPENAI_TEACHER.items() if k != missing}
    message = spec_error(doc(annotate={"teacher": teacher}))
    assert "spec.annotate.teacher" in message
    assert "base_url" in message


def test_openai_teacher_with_endpoint_is_valid():
    run = parse_run(doc(annotate={"teacher": OPENAI_TEACHER}))
    assert run.spec.annotate.teacher.kind == "openai"
    assert run.spec.annotate.teacher.api_key_env == "OPENAI_API_KEY"


def test_openai_referee_needs_an_endpoint():
    assert "spec.rl.referee" in spec_error(doc(rl={"referee": {"kind": "openai"}}))


@pytest.mark.parametrize(
    "annotate",
    [{"teacher": {"kind": "scripted"}}, {}],
    ids=["explicit", "default-teacher"],
)
def test_scripted_teacher_with_real_data_is_rejected(annotate):
    message = spec_error(doc(data=REAL_DATA, annotate=annotate))
    assert "spec" in message
    assert "scripted" in message


def test_real_data_with_openai_teacher_is_valid():
    run = parse_run(doc(data=REAL_DATA, annotate={"teacher": OPENAI_TEACHER}))
    assert run.spec.data.synthetic is None


@pytest.mark.parametrize(
    "name",
    ["Tiny-Demo", "tiny_demo", "-tiny", "tiny-", "tiny.demo", "", "a" * 64, "tiny demo"],
)
def test_run_name_must_be_a_dns_label(name):
    document = copy.deepcopy(MINIMAL)
    document["metadata"]["name"] = name
    message = spec_error(document)
    assert "metadata.name" in message
    assert "DNS label" in message


@pytest.mark.parametrize("name", ["a", "tiny-demo", "run-0", "0run", "a" * 63])
def test_dns_label_names_are_accepted(name):
    document = copy.deepcopy(MINIMAL)
    document["metadata"]["name"] = name
    assert parse_run(document).name == name


def test_missing_metadata_name_is_reported():
    document = copy.deepcopy(MINIMAL)
    document["metadata"] = {}
    assert "metadata.name" in spec_error(document)


@pytest.mark.parametrize(
    ("field", "value"),
    [("apiVersion", "egt.dev/v1"), ("kind", "EGTJob")],
)
def test_api_version_and_kind_are_checked(field, value):
    document = copy.deepcopy(MINIMAL)
    document[field] = value
    assert field in spec_error(document)


@pytest.mark.parametrize(
    ("section", "values"),
    [
        ("rl", {"epochs": 0}),
        ("rl", {"clip_epsilon": 1.0}),
        ("rl", {"ratio_max": 1.0}),
        ("rl", {"kl_coef": -0.1}),
        ("sft", {"learning_rate": 0}),
        ("curate", {"percentile": 101, "keep": None}),
        ("annotate", {"max_attempts": 4}),
        ("store", {"uri": "gs://bucket/x"}),
    ],
)
def test_out_of_range_values_are_rejected(section, values):
    field = next(iter(values))
    assert f"spec.{section}.{field}" in spec_error(doc(**{section: values}))


def test_synthetic_fractions_must_leave_room():
    message = spec_error(doc(data={"synthetic": {"ambiguous_fraction": 0.6, "flipped_fraction": 0.5}}))
    assert "spec.data.synthetic" in message


def test_every_error_is_listed():
    document = doc(
        curate={"strategy": "lowest"},
        sft={"learning_rat": 1e-5},
        rl={"epochs": 0},
    )
    document["metadata"]["name"] = "Bad_Name"
    message = spec_error(document)
    assert "4 invalid field(s)" in message.splitlines()[0]
    for path in ("spec.curate.strategy", "spec.sft.learning_rat", "spec.rl.epochs", "metadata.name"):
        assert path in message
    assert len(message.splitlines()) == 5  # header + one line per error


# --- files ----------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match=re.escape(str(path))) as caught:
        load_run(path)
    assert "no such file" in str(caught.value)


def test_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("spec: {model: [unclosed\n")
    with pytest.raises(SpecError, match=re.escape(str(path))) as caught:
        load_run(path)
    assert "YAML" in str(caught.value)


@pytest.mark.parametrize(
    "text", ["- a\n- b\n", "just a string\n", "", "42\n"], ids=["list", "str", "empty", "int"]
)
def test_not_a_mapping(tmp_path, text):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=re.escape(str(path))) as caught:
        load_run(path)
    assert "mapping" in str(caught.value)


def test_validation_error_from_a_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc(curate={"strategy": "lowest"})))
    with pytest.raises(SpecError) as caught:
        load_run(path)
    assert str(caught.value).startswith(f"{path}:")
    assert "spec.curate.strategy" in str(caught.value)


def test_spec_error_is_a_value_error():
    assert issubclass(SpecError, ValueError)


# --- defaults are the EGT paper's ----------------------------------------------------------------------


def test_defaults_match_the_paper():
    spec = parse_run(MINIMAL).spec
    assert spec.sft.epochs == 1
    assert spec.sft.global_batch_size == 256
    assert spec.sft.learning_rate == 1e-5

    assert spec.curate.strategy == "entropy"
    assert spec.curate.keep == 2500
    assert spec.curate.percentile is None
    assert spec.curate.metric == "answer"

    rl = spec.rl
    assert rl.epochs == 20
    assert rl.global_batch_size == 224
    assert rl.learning_rate == 1e-6
    assert rl.alpha == 0.5
    assert rl.beta == 0.5
    assert rl.clip_epsilon == 0.2
    assert (rl.ratio_min, rl.ratio_max) == (1e-3, 1e3)
    assert rl.log_ratio_bounds == pytest.approx((math.log(1e-3), math.log(1e3)))
    assert rl.advantage_sigma == 3
    assert rl.kl_coef == 0
    assert rl.referee.kind == "rules"

    assert spec.annotate.max_attempts == 3
    assert spec.evaluate.models == ["sft", "rl"]
    assert spec.evaluate.both_orders is True
    assert spec.metrics.pushgateway is None


def test_resolved_dump_contains_every_default():
    resolved = yaml.safe_load(dump_run(parse_run(MINIMAL)))
    assert resolved["apiVersion"] == "egt.dev/v1alpha1"
    assert set(resolved["spec"]) == {
        "store",
        "kind",
        "model",
        "data",
        "annotate",
        "sft",
        "probe",
        "curate",
        "rl",
        "scalar",
        "evaluate",
        "score",
        "filter",
        "metrics",
        "cluster",
        "suspend",
    }
    assert resolved["spec"]["rl"]["ratio_max"] == 1000.0
    assert resolved["spec"]["curate"]["keep"] == 2500


def test_stages_are_in_pipeline_order():
    assert STAGES == (
        "prepare", "annotate", "sft", "probe", "curate", "rl", "scalar", "evaluate", "score", "filter"
    )  # fmt: skip


def test_a_run_kind_decides_its_stages():
    reasoning = parse_run(MINIMAL).spec
    assert reasoning.stages == ("prepare", "annotate", "sft", "probe", "curate", "rl", "evaluate")
    with_baseline = parse_run(doc(evaluate={"models": ["sft", "rl", "scalar"]})).spec
    assert with_baseline.stages == STAGES[: STAGES.index("evaluate") + 1]
    scalar = parse_run(doc(kind="scalar")).spec
    assert scalar.stages == ("prepare", "scalar", "evaluate")
    assert scalar.evaluate.models == ["scalar"]  # its default


def test_score_and_filter_are_stages_when_asked_for_and_apply_the_final_model_by_default():
    both = parse_run(doc(score={"candidates": "s3://b/c.jsonl"}, filter={"enabled": True})).spec
    assert both.stages[-3:] == ("evaluate", "score", "filter")
    assert both.model_applied(both.score) == both.model_applied(both.filter) == "rl"
    assert both.score.model is None  # left unset: a resolved spec stays valid when rl is switched off
    no_rl = parse_run(doc(rl={"enabled": False}, evaluate={"models": ["sft"]}, filter={"enabled": True}))
    assert no_rl.spec.model_applied(no_rl.spec.filter) == "sft"
    # Applying the scalar model brings its stage into a reasoning run.
    uses_scalar = parse_run(doc(evaluate={"models": ["sft"]}, filter={"enabled": True, "model": "scalar"}))
    assert "scalar" in uses_scalar.spec.stages
    scalar_run = parse_run(doc(kind="scalar", score={"candidates": "c.jsonl"})).spec
    assert scalar_run.stages == ("prepare", "scalar", "evaluate", "score")
    assert scalar_run.model_applied(scalar_run.score) == "scalar"
    assert "spec.filter.model: kind 'scalar' trains only the scalar model: use scalar" in spec_error(
        doc(kind="scalar", filter={"enabled": True, "model": "sft"})
    )
    assert "spec.score.model: rl.enabled is false: there is no RL model; use sft" in spec_error(
        doc(rl={"enabled": False}, evaluate={"models": ["sft"]}, score={"candidates": "c", "model": "rl"})
    )
    assert "spec.score.candidates" in spec_error(doc(score={"candidates": "https://x/c.jsonl"}))
    assert "spec.filter.fraction" in spec_error(doc(filter={"enabled": True, "fraction": 1.5}))


def test_a_scalar_run_evaluates_only_its_model_and_needs_no_rl_pool():
    assert "spec.evaluate.models: kind 'scalar' trains no sft or rl model: must be [scalar]" in spec_error(
        doc(kind="scalar", evaluate={"models": ["sft", "scalar"]})
    )
    real = {"sft": REAL_DATA["sft"], "eval": {"vl": {"uri": "s3://b/vl.parquet", "format": "vl-rewardbench"}}}
    assert parse_run(doc(kind="scalar", data=real)).spec.data.rl is None  # no teacher either
    assert "only a kind 'scalar' run needs no rl" in spec_error(
        doc(data=real, annotate={"teacher": OPENAI_TEACHER})
    )
    assert "cannot freeze" not in spec_error(
        doc(scalar={"freeze": ["decoder"]})
    )  # pydantic names the choices
    assert "scalar.freeze.0" in spec_error(doc(scalar={"freeze": ["decoder"]}))


# --- the JSON schema: what kubectl explain shows, and no room for secrets ---------------------------------


def _schema_objects() -> dict[str, dict[str, Any]]:
    """The root schema and every $defs entry, by name."""
    schema = EGTRun.model_json_schema()
    return {"EGTRun": schema, **schema.get("$defs", {})}


def _properties() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (name, prop, body)
        for name, obj in _schema_objects().items()
        for prop, body in obj.get("properties", {}).items()
    ]


def test_schema_covers_every_section():
    names = set(_schema_objects())
    for section in ("EGTRunSpec", "ModelSpec", "DataSpec", "TeacherSpec", "SFTSpec", "CurateSpec", "RLSpec"):
        assert section in names


def test_every_schema_property_has_a_description():
    missing = [
        f"{name}.{prop}" for name, prop, body in _properties() if not body.get("description", "").strip()
    ]
    assert not missing, f"properties without a description (kubectl explain shows nothing): {missing}"


_SECRETISH = re.compile(r"(secret|password|token|api_key)$", re.IGNORECASE)


def test_no_field_can_carry_a_secret_value():
    offenders = [
        f"{name}.{prop}"
        for name, prop, _ in _properties()
        if _SECRETISH.search(prop) and not prop.endswith(("_env", "_secret"))
    ]
    assert not offenders, f"fields that would hold a secret value in the run file: {offenders}"


def test_secret_reference_fields_say_what_they_name():
    references = [
        (f"{name}.{prop}", prop, body)
        for name, prop, body in _properties()
        if prop.endswith(("_env", "_secret"))
    ]
    assert references, "expected api_key_env / *_secret reference fields"
    for where, prop, body in references:
        description = body.get("description", "")
        if prop.endswith("_env"):
            assert "environment" in description.lower(), where
            default = body.get("default")
            assert default is None or re.fullmatch(r"[A-Z_][A-Z0-9_]*", default), f"{where}: {default!r}"
        else:
            assert "Secret" in description, where


def test_schema_rejects_unknown_fields_like_the_model():
    # extra="forbid" must reach the CRD schema, or the API server would prune typos silently.
    for name, obj in _schema_objects().items():
        if name != "Metadata" and obj.get("type") == "object" and "properties" in obj:
            assert obj.get("additionalProperties") is False, name


def test_cluster_env_refuses_secrets():
    doc = copy.deepcopy(MINIMAL)
    doc["spec"]["cluster"] = {"env": {"OPENAI_API_KEY": "sk-123"}}
    with pytest.raises(SpecError, match="looks like a secret"):
        parse_run(doc)
    doc["spec"]["cluster"] = {"env": {"NCCL_SOCKET_IFNAME": "eth0"}}
    assert parse_run(doc).spec.cluster.env == {"NCCL_SOCKET_IFNAME": "eth0"}


@pytest.mark.parametrize(
    "cluster, named",
    [
        ({"resources": {"sft": {"memory": "512GB"}}}, "spec.cluster.resources.sft.memory"),
        ({"resources": {"rl": {"cpu": "two"}}}, "spec.cluster.resources.rl.cpu"),
        ({"shm_size": "16 GiB"}, "spec.cluster.shm_size"),
        ({"node_selector": {"gpu type": "h20"}}, "is not a Kubernetes label key"),
        ({"node_selector": {"pool": "h20/large"}}, "spec.cluster.node_selector.pool"),
        ({"tolerations": [{"key": "gpu", "operator": "Exists", "value": "x"}]}, "takes no value"),
        ({"tolerations": [{"operator": "Equal", "value": "x"}]}, "without a key needs operator Exists"),
        ({"tolerations": [{"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 5}]}, "NoExecute only"),
        ({"tolerations": [{"key": "gpu", "effect": "NoSchedul"}]}, "spec.cluster.tolerations.0.effect"),
        ({"resources": {"evaluate": {"nodes": 2}}}, "evaluate runs in one pod"),  # not silently ignored
        ({"queue": "team a"}, "spec.cluster.queue"),
    ],
)
def test_cluster_values_the_api_server_would_refuse_are_refused_here(cluster, named):
    # Found at `egt validate`, not when the operator's create fails mid-run (issue 12, defect 2).
    assert named in spec_error(doc(cluster=cluster))


def test_cluster_values_kubernetes_accepts_pass():
    cluster = {
        "resources": {"sft": {"cpu": "500m", "memory": "1.5G"}, "rl": {"cpu": "64", "memory": "512Gi"}},
        "shm_size": "16Gi",
        "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H20", "pool": ""},
        "tolerations": [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            {"operator": "Exists"},
            {"key": "spot", "value": "true", "effect": "NoExecute", "tolerationSeconds": 60},
        ],
    }
    assert parse_run(doc(cluster=cluster)).spec.cluster.tolerations[2].tolerationSeconds == 60


def test_a_bare_dataset_uri_says_how_to_write_it():
    message = spec_error(doc(data={"sft": "s3://b/sft.jsonl", "rl": REAL_DATA["rl"]}))
    assert "spec.data.sft" in message and "{uri: s3://b/sft.jsonl, format: …}" in message
    message = spec_error(doc(data={**REAL_DATA, "eval": {"vl": "s3://b/vl.parquet"}}))
    assert "spec.data.eval" in message and "set 'vl' as {uri: s3://b/vl.parquet" in message


@pytest.mark.parametrize("name", ["sft", "rl", "Bad_Name", "-x"])
def test_eval_set_names_are_file_and_label_safe(name):
    message = spec_error(doc(data={**REAL_DATA, "eval": {name: {"uri": "s3://b/x.jsonl"}}}))
    assert f"set name {name!r}" in message


def test_strip_prefix_is_for_converted_formats_and_root_for_every_format():
    rl = {"uri": "s3://b/rl.jsonl", "strip_prefix": "/home/authors"}
    assert "strip_prefix applies to converted formats" in spec_error(
        doc(data={"sft": REAL_DATA["sft"], "rl": rl}, annotate={"teacher": OPENAI_TEACHER})
    )
    rooted = {"uri": "s3://b/rl.jsonl", "root": "s3://b/images"}  # native records, images elsewhere
    run = parse_run(doc(data={"sft": REAL_DATA["sft"], "rl": rooted}, annotate={"teacher": OPENAI_TEACHER}))
    assert run.spec.data.rl.root == "s3://b/images"


def test_a_cross_field_rule_names_the_field_to_change():
    """Own data with the demo's scripted teacher: the error is on spec.annotate.teacher.kind, and
    says what to use instead, the offline server included and what it can read."""
    message = spec_error(doc(data=REAL_DATA))
    assert "  spec.annotate.teacher.kind: 'scripted' only reads the synthetic colour images" in message
    assert "use 'openai'" in message and "python -m egt.teachers.server" in message
    assert "Value error" not in message
