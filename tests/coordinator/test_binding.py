"""Binding InferenceServices to cached models and admitting LocalModelCaches, on real objects."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelcache.contract.objects import ModelCache, NodeGroup, parse_cache, parse_node_group
from modelcache.contract.storage_keys import storage_key
from modelcache.coordinator.binding import (
    DISABLE_ANNOTATION,
    LOCAL_MODEL_LABEL,
    NODE_GROUP_ANNOTATION,
    PVC_NAME_ANNOTATION,
    SOURCE_URI_ANNOTATION,
    BindingSettings,
    Verdict,
    admit_cache,
    bind_inference_service,
    model_node_label,
    predictor_storage_uri,
    requested_gpus,
    uri_matches,
)
from modelcache.coordinator.placement import place
from modelcache.coordinator.webhooks import json_patch

LLAMA = "hf://meta-llama/llama-3-8b"
IRIS = "s3://models/iris"
SETTINGS = BindingSettings()


def cache_raw(name: str, uri: str, size: str, *groups: str, deleting: bool = False) -> Any:
    metadata: dict[str, Any] = {"name": name}
    if deleting:
        metadata["deletionTimestamp"] = "2026-11-24T10:00:00Z"
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelCache",
        "metadata": metadata,
        "spec": {"sourceModelUri": uri, "modelSize": size, "nodeGroups": list(groups)},
    }


def group_raw(name: str, limit: str) -> Any:
    return {"metadata": {"name": name}, "spec": {"storageLimit": limit}}


@dataclass
class Cluster:
    """An `AdmissionView` over real parsed objects and the real placement."""

    cache_list: list[ModelCache] = field(default_factory=list)
    group_list: list[NodeGroup] = field(default_factory=list)
    members: dict[str, list[str]] = field(default_factory=dict)  # group -> nodes
    downloaded: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (cache, group)
    gpus: dict[str, int] = field(default_factory=dict)
    users: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    @property
    def caches(self) -> Mapping[str, ModelCache]:
        return {c.name: c for c in self.cache_list}

    @property
    def groups(self) -> Mapping[str, NodeGroup]:
        return {g.name: g for g in self.group_list}

    def admitted_groups(self, cache_name: str) -> Sequence[str]:
        return place(self.cache_list, self.groups).admitted_groups(cache_name)

    def group_members(self, group: str) -> Sequence[str]:
        return self.members.get(group, [])

    def placement_of(self, cache_name: str, group: str) -> Sequence[str]:
        return self.downloaded.get((cache_name, group), [])

    def node_allocatable_gpus(self, node: str) -> int | None:
        return self.gpus.get(node)

    def inference_services_using(self, cache_name: str) -> Sequence[tuple[str, str]]:
        return self.users.get(cache_name, [])


def cluster(**overrides: Any) -> Cluster:
    """llama (on a100, then h100), iris (a100), and a cluster where n1 holds llama on a100."""
    base = Cluster(
        cache_list=[
            parse_cache(cache_raw("llama", LLAMA, "10Gi", "a100", "h100")),
            parse_cache(cache_raw("iris", IRIS, "1Gi", "a100")),
        ],
        group_list=[
            parse_node_group(group_raw("a100", "100Gi")),
            parse_node_group(group_raw("h100", "50Gi")),
        ],
        members={"a100": ["n1", "n2"], "h100": ["h1"]},
        downloaded={("llama", "a100"): ["n1"]},
        gpus={"n1": 4, "n2": 8, "h1": 8},
    )
    for key, value in overrides.items():
        setattr(base, key, value)
    return base


def isvc(
    uri: str | None = LLAMA, annotations: dict[str, str] | None = None, **predictor: Any
) -> Any:
    model: dict[str, Any] = {"modelFormat": {"name": "huggingface"}}
    if uri is not None:
        model["storageUri"] = uri
    meta: dict[str, Any] = {"name": "chat", "namespace": "team-a"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": meta,
        "spec": {"predictor": {"model": model, **predictor}},
    }


def applied(obj: Any, verdict: Verdict) -> Any:
    """The object after the JSON Patch the webhook would send, applied by an independent library."""
    assert verdict.allowed, verdict.message
    if verdict.mutated is None:
        return obj
    ops = json_patch(obj, verdict.mutated)
    result = jsonpatch.apply_patch(obj, ops)
    assert result == verdict.mutated
    return result


def required_terms(obj: Any) -> list[Any]:
    affinity = obj["spec"]["predictor"]["affinity"]["nodeAffinity"]
    terms: list[Any] = affinity["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    return terms


# --- URI matching (KServe's MatchStorageURI) ----------------------------------------------------


@pytest.mark.parametrize(
    ("cached", "wanted", "match"),
    [
        ("s3://bucket/llama", "s3://bucket/llama", True),
        ("s3://bucket/llama/", "s3://bucket/llama", True),
        ("s3://bucket/llama", "s3://bucket/llama/", True),
        ("s3://bucket/llama", "s3://bucket/llama/tokenizer", True),
        ("s3://bucket/llama", "s3://bucket/llama-2", False),  # a prefix, but not a sub-path
        ("s3://bucket/llama/tokenizer", "s3://bucket/llama", False),
        ("hf://meta/llama", "hf://meta/llama:v2", False),
        ("hf://meta/llama", "hf://meta/LLAMA", False),
    ],
)
def test_uri_matches_like_kserve(cached: str, wanted: str, match: bool) -> None:
    assert uri_matches(cached, wanted) is match


segments = st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True)


@given(base=segments, rest=st.lists(segments, min_size=1, max_size=3), tail=segments)
def test_sub_paths_match_and_longer_names_do_not(base: str, rest: list[str], tail: str) -> None:
    cached = f"s3://bucket/{base}"
    assert uri_matches(cached, f"{cached}/{'/'.join(rest)}")
    assert uri_matches(cached + "/", f"{cached}/{'/'.join(rest)}/")
    assert not uri_matches(cached, f"{cached}{tail}")


def test_storage_uri_is_found_where_kserve_looks() -> None:
    assert predictor_storage_uri(isvc()) == LLAMA
    old_schema = {"spec": {"predictor": {"sklearn": {"storageUri": "s3://b/iris"}}}}
    assert predictor_storage_uri(old_schema) == "s3://b/iris"
    custom = {
        "spec": {
            "predictor": {
                "containers": [
                    {"name": "sidecar", "env": [{"name": "STORAGE_URI", "value": "s3://b/no"}]},
                    {"name": "kserve-container", "env": [{"name": "STORAGE_URI", "value": LLAMA}]},
                ]
            }
        }
    }
    assert predictor_storage_uri(custom) == LLAMA
    assert predictor_storage_uri(isvc(uri=None)) is None
    assert predictor_storage_uri({"spec": {"predictor": ["not", "a", "map"]}}) is None


# --- binding ------------------------------------------------------------------------------------


def test_a_matching_isvc_is_bound_the_kserve_way_and_pinned_to_nodes_holding_the_model() -> None:
    obj = isvc(uri=LLAMA + "/")
    verdict = bind_inference_service(obj, cluster(), SETTINGS)
    result = applied(obj, verdict)
    assert result["metadata"]["labels"] == {LOCAL_MODEL_LABEL: "llama"}
    assert result["metadata"]["annotations"] == {
        SOURCE_URI_ANNOTATION: LLAMA,
        PVC_NAME_ANNOTATION: "llama-a100",  # KServe's <cache>-<group>
    }
    assert required_terms(result) == [
        {
            "matchExpressions": [
                {
                    "key": f"localmodel.modelcache.io/{storage_key(LLAMA)}",
                    "operator": "In",
                    "values": ["downloaded"],
                },
                {"key": "serving.kserve.io/nodegroup", "operator": "In", "values": ["a100"]},
            ]
        }
    ]
    assert (
        result["spec"]["predictor"]["model"]["storageUri"] == LLAMA + "/"
    )  # KServe's pod mutator maps it
    assert verdict.warnings == ()  # n1 holds it already


def test_the_patch_adds_missing_maps_and_escapes_slashes_in_keys() -> None:
    bare = isvc()
    ops = json_patch(bare, bind_inference_service(bare, cluster(), SETTINGS).mutated)
    assert {"op": "add", "path": "/metadata/labels", "value": {LOCAL_MODEL_LABEL: "llama"}} in ops
    labelled = isvc()
    labelled["metadata"]["labels"] = {"app": "chat"}
    ops = json_patch(labelled, bind_inference_service(labelled, cluster(), SETTINGS).mutated)
    assert {
        "op": "add",
        "path": "/metadata/labels/internal.serving.kserve.io~1localmodel",
        "value": "llama",
    } in ops
    weird = {"a/b~c": {"x": 1}}
    assert json_patch(weird, {"a/b~c": {"x": 2}}) == [
        {"op": "replace", "path": "/a~1b~0c/x", "value": 2}
    ]


def test_model_node_labels_are_valid_label_keys() -> None:
    key = model_node_label(storage_key(LLAMA))
    prefix, name = key.split("/")
    assert prefix == "localmodel.modelcache.io"
    assert 0 < len(name) <= 63
    assert name.isalnum()


def test_no_matching_cache_and_opt_out_leave_the_isvc_unchanged() -> None:
    for obj in (
        isvc(uri="s3://bucket/other"),
        isvc(uri=None),
        isvc(uri=LLAMA + "-instruct"),
        isvc(annotations={DISABLE_ANNOTATION: "true"}),
    ):
        verdict = bind_inference_service(obj, cluster(), SETTINGS)
        assert verdict.allowed
        assert json_patch(obj, verdict.mutated) == []


def test_opting_out_later_removes_the_binding_and_keeps_the_users_affinity() -> None:
    user_term = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["eu"]}]}
    obj = isvc(
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [user_term]}
            }
        }
    )
    bound = applied(obj, bind_inference_service(obj, cluster(), SETTINGS))
    assert len(required_terms(bound)[0]["matchExpressions"]) == 3  # ANDed with the user's
    bound["metadata"]["annotations"][DISABLE_ANNOTATION] = "true"
    unbound = applied(bound, bind_inference_service(bound, cluster(), SETTINGS))
    assert LOCAL_MODEL_LABEL not in unbound["metadata"]["labels"]
    assert unbound["metadata"]["annotations"] == {DISABLE_ANNOTATION: "true"}
    assert required_terms(unbound) == [user_term]
    plain = isvc()
    bound = applied(plain, bind_inference_service(plain, cluster(), SETTINGS))
    bound["spec"]["predictor"]["model"]["storageUri"] = "s3://bucket/elsewhere"
    unbound = applied(bound, bind_inference_service(bound, cluster(), SETTINGS))
    assert "affinity" not in unbound["spec"]["predictor"]  # only ours was there


def test_binding_twice_changes_nothing_and_a_new_group_replaces_the_pin() -> None:
    obj = isvc()
    bound = applied(obj, bind_inference_service(obj, cluster(), SETTINGS))
    again = bind_inference_service(bound, cluster(), SETTINGS)
    assert json_patch(bound, again.mutated) == []
    bound["metadata"]["annotations"][NODE_GROUP_ANNOTATION] = "h100"
    moved = applied(bound, bind_inference_service(bound, cluster(), SETTINGS))
    (term,) = required_terms(moved)
    assert term["matchExpressions"][1]["values"] == ["h100"]
    assert len(term["matchExpressions"]) == 2
    assert moved["metadata"]["annotations"][PVC_NAME_ANNOTATION] == "llama-h100"


def test_every_user_term_gets_the_pin_and_other_affinity_is_kept() -> None:
    terms = [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["eu"]}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]},
    ]
    preferred = [
        {"weight": 1, "preference": {"matchExpressions": [{"key": "fast", "operator": "Exists"}]}}
    ]
    obj = isvc(
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms},
                "preferredDuringSchedulingIgnoredDuringExecution": preferred,
            },
            "podAntiAffinity": {"x": 1},
        }
    )
    result = applied(obj, bind_inference_service(obj, cluster(), SETTINGS))
    first, second = required_terms(result)
    assert first["matchExpressions"][0]["key"] == "zone"
    assert len(first["matchExpressions"]) == 3
    assert second["matchFields"] == terms[1]["matchFields"]
    assert len(second["matchExpressions"]) == 2
    affinity = result["spec"]["predictor"]["affinity"]
    assert affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] == preferred
    assert affinity["podAntiAffinity"] == {"x": 1}


def test_group_choice_annotation_first_group_and_first_admitted_group() -> None:
    on_h100 = isvc(annotations={NODE_GROUP_ANNOTATION: "h100"})
    chosen = applied(on_h100, bind_inference_service(on_h100, cluster(), SETTINGS))
    assert required_terms(chosen)[0]["matchExpressions"][1]["values"] == ["h100"]
    default = applied(isvc(), bind_inference_service(isvc(), cluster(), SETTINGS))
    assert required_terms(default)[0]["matchExpressions"][1]["values"] == ["a100"]
    # a100 too small for the model: without an annotation the first group that admits it wins.
    small = [
        parse_node_group(group_raw("a100", "5Gi")),
        parse_node_group(group_raw("h100", "50Gi")),
    ]
    result = applied(isvc(), bind_inference_service(isvc(), cluster(group_list=small), SETTINGS))
    assert required_terms(result)[0]["matchExpressions"][1]["values"] == ["h100"]
    # Placed nowhere and nothing asked for: admitted as without a cache, with a warning.
    tiny = [parse_node_group(group_raw("a100", "5Gi"))]
    verdict = bind_inference_service(isvc(), cluster(group_list=tiny), SETTINGS)
    assert applied(isvc(), verdict) == isvc()
    assert "is placed on none of its node groups" in verdict.warnings[0]


def test_a_group_that_is_not_the_caches_is_refused_with_the_choices() -> None:
    verdict = bind_inference_service(
        isvc(annotations={NODE_GROUP_ANNOTATION: "t4"}), cluster(), SETTINGS
    )
    assert not verdict.allowed
    assert verdict.code == 422
    assert "InferenceService team-a/chat asks for node group 't4'" in verdict.message
    assert "a100, h100 only" in verdict.message


def test_a_group_where_the_model_is_not_placed_is_refused() -> None:
    small = [
        parse_node_group(group_raw("a100", "100Gi")),
        parse_node_group(group_raw("h100", "5Gi")),
    ]
    verdict = bind_inference_service(
        isvc(annotations={NODE_GROUP_ANNOTATION: "h100"}), cluster(group_list=small), SETTINGS
    )
    assert not verdict.allowed
    assert "Admitted-h100" in verdict.message
    gone = bind_inference_service(
        isvc(annotations={NODE_GROUP_ANNOTATION: "h100"}), cluster(group_list=small[:1]), SETTINGS
    )
    assert "does not exist" in gone.message


def test_more_gpus_than_any_node_of_the_group_offers_is_refused_with_numbers() -> None:
    gpu = {"resources": {"limits": {"nvidia.com/gpu": "6"}}}
    obj = isvc()
    obj["spec"]["predictor"]["model"].update(gpu)
    obj["spec"]["predictor"]["containers"] = [
        {"name": "proxy", "resources": {"requests": {"nvidia.com/gpu": 3}}}
    ]
    assert requested_gpus(obj) == 9
    verdict = bind_inference_service(obj, cluster(), SETTINGS)
    assert not verdict.allowed
    assert (
        "requests 9 nvidia.com/gpu per pod, but the largest node of group a100 (n2) offers 8"
        in verdict.message
    )
    unknown = bind_inference_service(obj, cluster(gpus={}), SETTINGS)
    assert unknown.allowed  # no node's allocatable is known: nothing to refuse on


def test_gpus_that_only_nodes_without_the_model_offer_give_a_warning() -> None:
    obj = isvc()
    obj["spec"]["predictor"]["model"]["resources"] = {"requests": {"nvidia.com/gpu": "6"}}
    verdict = bind_inference_service(obj, cluster(), SETTINGS)
    assert verdict.allowed
    assert any("stay Pending until a larger node has the model" in w for w in verdict.warnings)
    obj["spec"]["predictor"]["model"]["resources"] = {"limits": {"nvidia.com/gpu": "1.5"}}
    assert "is not a whole count" in bind_inference_service(obj, cluster(), SETTINGS).message


def test_before_any_download_finishes_the_isvc_is_pinned_and_warned_pending() -> None:
    obj = isvc()
    verdict = bind_inference_service(obj, cluster(downloaded={}), SETTINGS)
    result = applied(obj, verdict)
    assert required_terms(result)[0]["matchExpressions"][0]["key"] == model_node_label(
        storage_key(LLAMA)
    )
    (warning,) = verdict.warnings
    assert "pods stay Pending until a download finishes" in warning
    assert f"{model_node_label(storage_key(LLAMA))}=downloaded" in warning


def test_the_most_specific_cache_wins_and_deleting_caches_bind_nothing() -> None:
    caches = [
        parse_cache(cache_raw("iris", IRIS, "10Gi", "a100")),
        parse_cache(cache_raw("iris-v2", IRIS + "/v2", "1Gi", "a100")),
    ]
    obj = isvc(uri=IRIS + "/v2/weights")
    result = applied(obj, bind_inference_service(obj, cluster(cache_list=caches), SETTINGS))
    assert result["metadata"]["labels"][LOCAL_MODEL_LABEL] == "iris-v2"
    obj = isvc(uri=IRIS + "/v1")
    result = applied(obj, bind_inference_service(obj, cluster(cache_list=caches), SETTINGS))
    assert result["metadata"]["labels"][LOCAL_MODEL_LABEL] == "iris"
    deleting = [parse_cache(cache_raw("llama", LLAMA, "10Gi", "a100", deleting=True))]
    verdict = bind_inference_service(isvc(), cluster(cache_list=deleting), SETTINGS)
    assert json_patch(isvc(), verdict.mutated) == []


def test_a_pvc_per_group_can_be_named() -> None:
    settings = BindingSettings(pvc_names={"a100": "models-a100"}, node_group_label="pool")
    result = applied(isvc(), bind_inference_service(isvc(), cluster(), settings))
    assert result["metadata"]["annotations"][PVC_NAME_ANNOTATION] == "models-a100"
    assert required_terms(result)[0]["matchExpressions"][1]["key"] == "pool"


# --- LocalModelCache admission ------------------------------------------------------------------


def test_a_valid_cache_is_admitted() -> None:
    raw = cache_raw("mistral", "hf://mistralai/mistral-7b", "14Gi", "a100", "h100")
    assert admit_cache("CREATE", raw, None, "mistral", cluster()) == Verdict(True)


@pytest.mark.parametrize(
    ("raw", "code", "fragment"),
    [
        (
            cache_raw("m", "ftp://x/y", "1Gi", "a100"),
            422,
            "spec.sourceModelUri: source URI 'ftp://x/y' has unsupported scheme",
        ),
        (cache_raw("m", "hf://a/b", "0", "a100"), 422, "spec.modelSize: must be greater than zero"),
        (
            cache_raw("m", "hf://a/b", "1Gi", "t4"),
            422,
            "node group t4 does not exist: create the LocalModelNodeGroup t4",
        ),
        (
            cache_raw("m", "hf://a/b", "60Gi", "a100", "h100"),
            422,
            "model m (60Gi) does not fit node group h100 (storageLimit 50Gi): raise its "
            "storageLimit or remove h100 from nodeGroups",
        ),
        (
            cache_raw("m", IRIS + "/", "1Gi", "a100"),
            409,
            f"LocalModelCache iris already caches {IRIS}: add node groups to iris",
        ),
    ],
)
def test_bad_caches_are_refused_with_what_to_do(raw: Any, code: int, fragment: str) -> None:
    verdict = admit_cache("CREATE", raw, None, "m", cluster())
    assert not verdict.allowed
    assert verdict.code == code
    assert fragment in verdict.message


def test_updates_check_what_changed() -> None:
    view = cluster()
    old = cache_raw("llama", LLAMA, "10Gi", "a100", "gone")
    relabelled = copy.deepcopy(old)
    relabelled["metadata"]["finalizers"] = []
    assert admit_cache("UPDATE", relabelled, old, "llama", view).allowed  # spec untouched
    grown = cache_raw("llama", LLAMA, "20Gi", "a100", "gone")
    assert admit_cache("UPDATE", grown, old, "llama", view).allowed  # 'gone' was listed before
    moved = cache_raw("llama", "hf://meta-llama/llama-3-70b", "20Gi", "a100")
    verdict = admit_cache("UPDATE", moved, old, "llama", view)
    assert "spec.sourceModelUri is immutable" in verdict.message
    deleting = cache_raw("llama", LLAMA, "999Gi", "a100", deleting=True)
    assert admit_cache("UPDATE", deleting, old, "llama", view).allowed


def test_deleting_a_cache_in_use_is_refused() -> None:
    view = cluster(users={"llama": [("team-b", "chat"), ("team-a", "bot")]})
    verdict = admit_cache("DELETE", None, cache_raw("llama", LLAMA, "10Gi", "a100"), "llama", view)
    assert verdict.code == 409
    assert "used by InferenceService team-a/bot, team-b/chat" in verdict.message
    assert admit_cache("DELETE", None, None, "llama", cluster()).allowed
