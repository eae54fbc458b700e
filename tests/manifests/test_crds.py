"""Our CRDs, checked offline: structural, printer columns that point at fields, CEL rules that
compile and do what their messages say, examples/ accepted, bad caches refused."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from modelcache.contract.errors import UsageError
from modelcache.contract.uris import parse_source_uri
from tests.manifests.crd_schemas import (
    admission_errors,
    compile_rule,
    crds,
    rules,
    served_schema,
    structural_errors,
)
from tests.manifests.tools import REPO, load_yaml

CRDS = crds()
KINDS = sorted(CRDS)
EXAMPLES = [
    pytest.param(doc, id=f"{path.name}:{doc['metadata']['name']}")
    for path in sorted((REPO / "examples").glob("*.yaml"))
    for doc in load_yaml(path)
]


def test_the_three_kserve_kinds_are_there() -> None:
    assert KINDS == ["LocalModelCache", "LocalModelNode", "LocalModelNodeGroup"]
    for crd in CRDS.values():
        assert crd["spec"]["group"] == "serving.kserve.io"
        assert crd["spec"]["scope"] == "Cluster"
        assert [v["name"] for v in crd["spec"]["versions"]] == ["v1alpha1"]
        assert crd["spec"]["names"]["shortNames"], "short names make kubectl bearable"


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_structural(kind: str) -> None:
    assert structural_errors(served_schema(CRDS[kind])) == []


@pytest.mark.parametrize("kind", KINDS)
def test_printer_columns_point_at_schema_fields(kind: str) -> None:
    schema = served_schema(CRDS[kind])
    (version,) = CRDS[kind]["spec"]["versions"]
    for column in version["additionalPrinterColumns"]:
        node = schema
        # `.status.conditions[?(@.type=="Ready")].reason`: status, conditions, items, reason
        for step in re.sub(r"\[\?\(.*?\)\]", ".[]", column["jsonPath"]).strip(".").split("."):
            node = node["items"] if step == "[]" else node.get("properties", {}).get(step, {})
            if step == "metadata":
                break
        assert node, f"{kind} column {column['name']}: {column['jsonPath']} is not in the schema"


def test_cache_columns_are_the_ones_operators_asked_for() -> None:
    (version,) = CRDS["LocalModelCache"]["spec"]["versions"]
    default = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert default == ["Ready", "Total", "Groups", "Size", "Age"]


@pytest.mark.parametrize(
    ("kind", "path", "rule"),
    [(k, path, r["rule"]) for k in KINDS for path, r in rules(served_schema(CRDS[k]))],
)
def test_every_cel_rule_compiles(kind: str, path: str, rule: str) -> None:
    compile_rule(rule)  # raises on a syntax error or an unknown function


@pytest.mark.parametrize("doc", EXAMPLES)
def test_examples_are_accepted(doc: dict[str, Any]) -> None:
    assert admission_errors(CRDS[doc["kind"]], doc) == []


def _cache(**spec: Any) -> dict[str, Any]:
    base = {
        "sourceModelUri": "hf://meta-llama/meta-llama-3-8b-instruct",
        "modelSize": "16Gi",
        "nodeGroups": ["a100"],
    }
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelCache",
        "metadata": {"name": "llama3"},
        "spec": {k: v for k, v in {**base, **spec}.items() if v is not None},
    }


def test_a_kserve_shaped_cache_and_group_are_accepted() -> None:
    cache = _cache(serviceAccountName="hf-reader", storage={"key": "hf", "parameters": {"a": "b"}})
    assert admission_errors(CRDS["LocalModelCache"], cache) == []
    group = {  # KServe's sample (docs/samples/localmodelcache), PV and PVC specs included
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelNodeGroup",
        "metadata": {"name": "workers"},
        "spec": {
            "storageLimit": "100Gi",
            "persistentVolumeClaimSpec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "100Gi"}},
                "storageClassName": "local-storage",
            },
            "persistentVolumeSpec": {
                "accessModes": ["ReadWriteOnce"],
                "capacity": {"storage": "100Gi"},
                "local": {"path": "/models"},
                "storageClassName": "local-storage",
                "nodeAffinity": {"required": {"nodeSelectorTerms": []}},
            },
        },
    }
    assert admission_errors(CRDS["LocalModelNodeGroup"], group) == []


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ({"sourceModelUri": "gs://bucket/model"}, "sourceModelUri"),
        ({"sourceModelUri": "hf://just-a-name"}, "sourceModelUri"),
        ({"sourceModelUri": "s3://Bucket_Upper/x"}, "sourceModelUri"),
        ({"sourceModelUri": None}, "sourceModelUri"),
        ({"modelSize": "16 GiB"}, "modelSize"),
        ({"modelSize": "-1Gi"}, "modelSize"),
        ({"modelSize": "0Gi"}, "modelSize must be greater than zero"),
        ({"modelSize": 0}, "modelSize must be greater than zero"),
        ({"nodeGroups": []}, "nodeGroups"),
        ({"nodeGroups": ["not a label value"]}, "nodeGroups"),
        ({"nodeGroups": None}, "exactly one of nodeGroups"),
        ({"nodeGroup": ["a100"]}, "exactly one of nodeGroups"),
        ({"nodeGroupz": ["a100"]}, "nodeGroupz"),  # a typo would otherwise be pruned silently
    ],
)
def test_bad_caches_are_refused(spec: dict[str, Any], complaint: str) -> None:
    errors = admission_errors(CRDS["LocalModelCache"], _cache(**spec))
    assert any(complaint in e for e in errors), errors


def test_the_older_spelling_nodegroup_is_accepted_alone() -> None:
    assert admission_errors(CRDS["LocalModelCache"], _cache(nodeGroups=None, nodeGroup=["a"])) == []


def test_source_uri_is_immutable_but_the_rest_is_not() -> None:
    crd = CRDS["LocalModelCache"]
    old = _cache()
    resized = _cache(modelSize="20Gi", nodeGroups=["a100", "h100"])
    assert admission_errors(crd, resized, old=old) == []
    moved = copy.deepcopy(old)
    moved["spec"]["sourceModelUri"] = "hf://meta-llama/meta-llama-3-70b"
    assert admission_errors(crd, moved, old=old) == [
        ".spec.sourceModelUri: sourceModelUri is immutable; create a new LocalModelCache for "
        "another model"
    ]


@pytest.mark.parametrize(
    "uri",
    [
        "hf://meta-llama/meta-llama-3-8b-instruct",
        "hf://Qwen/Qwen2.5-0.5B:main",
        "hf://org/model:refs/pr/1",
        "hf://org/model:0123456789abcdef0123456789abcdef01234567",
        "s3://models/llama3/",
        "s3://my.bucket-1",
        "https://mirror.internal/models/llama3.safetensors",
        "http://10.0.0.5:8000/models/x",
    ],
)
def test_the_uri_pattern_accepts_what_the_agents_can_pull(uri: str) -> None:
    parse_source_uri(uri)  # the agents' parser takes it ...
    assert (
        admission_errors(CRDS["LocalModelCache"], _cache(sourceModelUri=uri)) == []
    )  # ... so must we


@pytest.mark.parametrize("uri", ["gs://b/m", "pvc://claim/model", "hf://a/b/c", "file:///models"])
def test_the_uri_pattern_refuses_what_the_agents_refuse(uri: str) -> None:
    with pytest.raises(UsageError):
        parse_source_uri(uri)
    assert admission_errors(CRDS["LocalModelCache"], _cache(sourceModelUri=uri))
