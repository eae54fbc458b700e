"""What the admission webhooks decide, as pure functions: which LocalModelCache an InferenceService
binds to and how it is pinned to the nodes that hold the model, and which LocalModelCaches may be
created, changed or deleted. No I/O; `webhooks.py` speaks AdmissionReview over HTTPS.

Binding does what KServe's InferenceService defaulter does, so KServe's pod mutator keeps working
unchanged: the label ``internal.serving.kserve.io/localmodel=<cache>`` and the annotations
``...localmodel-sourceuri`` and ``...localmodel-pvc-name``. The storage URI in the spec is left as
the user wrote it: KServe's storage-initializer injector turns those annotations into
``pvc://<pvc-name>/models/<storage-key><sub-path>`` on each pod, and an InferenceService whose URI
had been rewritten would no longer match its cache on the next update.

Where we do better than KServe (which binds before any node has the model, kserve#4681): the
predictor gets a required node affinity on two labels at once, the node-group label (one group per
InferenceService) and a per-model label the coordinator puts on a node only once the model is
Downloaded there (`model_node_label`). Pods of an InferenceService created before any download
has finished stay Pending and schedule as soon as a node is labelled; a warning says so.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from modelcache.contract.errors import UsageError
from modelcache.contract.objects import (
    DEFAULT_NODE_GROUP_LABEL,
    FieldError,
    JsonObject,
    ModelCache,
    NodeGroup,
    parse_cache,
)
from modelcache.contract.quantities import parse_quantity
from modelcache.coordinator.placement import byte_quantity

# KServe's keys (pkg/constants), kept exactly.
LOCAL_MODEL_LABEL: Final = "internal.serving.kserve.io/localmodel"
SOURCE_URI_ANNOTATION: Final = "internal.serving.kserve.io/localmodel-sourceuri"
PVC_NAME_ANNOTATION: Final = "internal.serving.kserve.io/localmodel-pvc-name"
DISABLE_ANNOTATION: Final = "serving.kserve.io/disable-localmodel"
NODE_GROUP_ANNOTATION: Final = "serving.kserve.io/nodegroup"
# Ours: `<prefix><storage-key>: downloaded` on every node that holds the model Downloaded.
MODEL_LABEL_PREFIX: Final = "localmodel.modelcache.io/"
DOWNLOADED: Final = "downloaded"
GPU_RESOURCE: Final = "nvidia.com/gpu"
# The predictor's implementations, in the order KServe's GetImplementations tries them.
_IMPLEMENTATIONS: Final = (
    "xgboost", "pytorch", "triton", "sklearn", "tensorflow", "onnx", "pmml", "lightgbm", "paddle",
    "huggingface", "model",
)  # fmt: skip
_PREDICTOR_CONTAINER: Final = "kserve-container"
_CUSTOM_STORAGE_URI_ENV: Final = "STORAGE_URI"


def model_node_label(storage_key: str) -> str:
    """The node label key saying a node holds this model: a valid label key (the storage key is 16
    hex characters, well under the 63 allowed for the name part)."""
    return MODEL_LABEL_PREFIX + storage_key


class AdmissionView(Protocol):
    """What the webhooks read from the coordinator; all calls are cheap and never block."""

    @property
    def caches(self) -> Mapping[str, ModelCache]: ...

    @property
    def groups(self) -> Mapping[str, NodeGroup]: ...

    def admitted_groups(self, cache_name: str) -> Sequence[str]:
        """The cache's groups whose storageLimit admits it (placement), in nodeGroups order."""
        ...

    def group_members(self, group: str) -> Sequence[str]:
        """Names of the nodes in the node group."""
        ...

    def placement_of(self, cache_name: str, group: str) -> Sequence[str]:
        """Nodes of the group that hold the cache's model Downloaded."""
        ...

    def node_allocatable_gpus(self, node: str) -> int | None:
        """The node's allocatable GPUs; None when unknown (such nodes never cause a refusal)."""
        ...

    def inference_services_using(self, cache_name: str) -> Sequence[tuple[str, str]]:
        """(namespace, name) of the existing InferenceServices bound to the cache."""
        ...


@dataclass(frozen=True, slots=True)
class BindingSettings:
    """How bound pods find the model.

    The PVC name is KServe's ``<cache>-<group>`` by default: KServe's localmodel controller
    creates exactly those PVCs (and their PVs from the group's persistentVolumeSpec) in each
    namespace with a bound InferenceService. A cluster that provides one PVC per node group instead
    (it holds every model, under ``models/<storage-key>``) names it in `pvc_names` (group -> name).
    """

    node_group_label: str = DEFAULT_NODE_GROUP_LABEL
    pvc_name_template: str = "{cache}-{group}"
    pvc_names: Mapping[str, str] = field(default_factory=dict)
    gpu_resource: str = GPU_RESOURCE

    def pvc_name(self, cache: str, group: str) -> str:
        return self.pvc_names.get(group) or self.pvc_name_template.format(cache=cache, group=group)


@dataclass(frozen=True, slots=True)
class Verdict:
    """One admission decision; `mutated` is the object as a mutating webhook wants it (None:
    unchanged), which the wire layer sends as a JSON Patch."""

    allowed: bool
    message: str = ""
    code: int = 200
    mutated: JsonObject | None = None
    warnings: tuple[str, ...] = ()


def _deny(code: int, message: str) -> Verdict:
    return Verdict(False, message, code)


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _trimmed(uri: str) -> str:
    return uri.rstrip("/")


def uri_matches(cached_uri: str, storage_uri: str) -> bool:
    """KServe's MatchStorageURI: trailing '/' ignored, then equal or a sub-path after a '/'."""
    cached, wanted = _trimmed(cached_uri), _trimmed(storage_uri)
    return wanted == cached or wanted.startswith(cached + "/")


# --- LocalModelCache ----------------------------------------------------------------------------


def admit_cache(
    operation: str, raw: object, old_raw: object, name: str, view: AdmissionView
) -> Verdict:
    """Validate a LocalModelCache CREATE, UPDATE or DELETE.

    An UPDATE that leaves the spec alone (finalizers, labels, a deletion in progress) is always
    allowed, so the coordinator can finish a deletion even after a node group is gone (kserve#6154).
    """
    if operation == "DELETE":
        users = view.inference_services_using(name)
        if users:
            listed = ", ".join(f"{ns}/{isvc}" for ns, isvc in sorted(users))
            return _deny(
                409,
                f"LocalModelCache {name} is used by InferenceService {listed}: delete them, or "
                f'annotate them {DISABLE_ANNOTATION}: "true", then delete the cache',
            )
        return Verdict(True)
    if not isinstance(raw, Mapping):
        return _deny(400, f"{operation} of LocalModelCache {name} carries no object")
    try:
        cache = parse_cache(raw)
    except FieldError as e:
        return _deny(422, f"LocalModelCache {name}: {e.field}: {e.reason}")
    old_groups: tuple[str, ...] = ()
    if operation == "UPDATE" and isinstance(old_raw, Mapping):
        if cache.deleting or _dict(old_raw).get("spec") == raw.get("spec"):
            return Verdict(True)
        try:
            old = parse_cache(old_raw)
        except UsageError:  # the stored object predates a rule: judge the new one on its own
            old = None
        if old is not None:
            if old.source_model_uri != cache.source_model_uri:
                return _deny(
                    422,
                    f"LocalModelCache {cache.name}: spec.sourceModelUri is immutable (it is "
                    f"{old.source_model_uri}): create a new cache for {cache.source_model_uri}",
                )
            old_groups = old.node_groups
    problems = [
        f"node group {group} does not exist: create the LocalModelNodeGroup {group} first"
        for group in cache.node_groups
        if group not in view.groups and group not in old_groups
    ]
    for group_name in cache.node_groups:
        group = view.groups.get(group_name)
        if group is not None and cache.model_size > group.storage_limit:
            problems.append(
                f"model {cache.name} ({cache.model_size_text}) does not fit node group "
                f"{group_name} (storageLimit {byte_quantity(group.storage_limit)}): raise its "
                f"storageLimit or remove {group_name} from nodeGroups"
            )
    if problems:
        return _deny(422, f"LocalModelCache {cache.name}: " + "; ".join(problems))
    for other in view.caches.values():
        if (
            other.name != cache.name
            and not other.deleting
            and _trimmed(other.source_model_uri) == _trimmed(cache.source_model_uri)
        ):
            return _deny(
                409,
                f"LocalModelCache {other.name} already caches {other.source_model_uri}: add node "
                f"groups to {other.name} instead of creating {cache.name}",
            )
    return Verdict(True)


# --- InferenceService ---------------------------------------------------------------------------


def predictor_storage_uri(isvc: Mapping[str, Any]) -> str | None:
    """The predictor's storage URI, found where KServe's GetImplementation finds it."""
    predictor = _dict(_dict(isvc.get("spec")).get("predictor"))
    for key in _IMPLEMENTATIONS:
        implementation = predictor.get(key)
        if isinstance(implementation, Mapping):
            uri = implementation.get("storageUri")
            return uri if isinstance(uri, str) and uri else None
    for container in _list(predictor.get("containers")):
        if _dict(container).get("name") == _PREDICTOR_CONTAINER:
            for env in _list(_dict(container).get("env")):
                if _dict(env).get("name") == _CUSTOM_STORAGE_URI_ENV:
                    value = _dict(env).get("value")
                    return value if isinstance(value, str) and value else None
    return None


def requested_gpus(isvc: Mapping[str, Any], resource: str = GPU_RESOURCE) -> int:
    """GPUs one predictor pod needs: the sum over its containers (limits, else requests), or the
    largest init container when that is more, as the scheduler counts them."""
    predictor = _dict(_dict(isvc.get("spec")).get("predictor"))
    containers = [predictor[k] for k in _IMPLEMENTATIONS if isinstance(predictor.get(k), Mapping)]
    containers += _list(predictor.get("containers"))
    running = sum(_container_gpus(c, resource) for c in containers)
    init = max(
        (_container_gpus(c, resource) for c in _list(predictor.get("initContainers"))), default=0
    )
    return max(running, init)


def _container_gpus(container: object, resource: str) -> int:
    resources = _dict(_dict(container).get("resources"))
    for kind in ("limits", "requests"):
        value = _dict(resources.get(kind)).get(resource)
        if value is not None and not isinstance(value, bool):
            try:
                amount = parse_quantity(str(value))
            except UsageError as e:
                raise FieldError(f"resources.{kind}[{resource}]", str(e)) from e
            if amount != amount.to_integral_value() or amount < 0:
                raise FieldError(f"resources.{kind}[{resource}]", f"{value!r} is not a whole count")
            return int(amount)
    return 0


def _who(isvc: Mapping[str, Any], namespace: str) -> str:
    meta = _dict(isvc.get("metadata"))
    name = meta.get("name") or meta.get("generateName") or "(unnamed)"
    return f"InferenceService {meta.get('namespace') or namespace or 'default'}/{name}"


def bind_inference_service(
    isvc: Mapping[str, Any], view: AdmissionView, settings: BindingSettings, namespace: str = ""
) -> Verdict:
    """Bind the InferenceService to the cache holding its model, or leave it unbound.

    Without a matching cache, or with the opt-out annotation (any value, as KServe), the binding
    metadata of an earlier admission is removed; a fresh object is left untouched.
    """
    meta = _dict(isvc.get("metadata"))
    annotations = _dict(meta.get("annotations"))
    uri = predictor_storage_uri(isvc)
    candidates: list[ModelCache] = []
    if uri is not None and DISABLE_ANNOTATION not in annotations:
        matches = (c for c in view.caches.values() if uri_matches(c.source_model_uri, uri))
        # The most specific cache first; a cache being deleted binds nothing new.
        candidates = sorted(
            (c for c in matches if not c.deleting),
            key=lambda c: (-len(_trimmed(c.source_model_uri)), c.name),
        )
    if not candidates:
        return Verdict(True, mutated=_unbound(isvc, settings))
    who = _who(isvc, namespace)
    wanted = annotations.get(NODE_GROUP_ANNOTATION)
    if wanted is None:  # KServe takes the first group; we take the first one the model is on
        cache = candidates[0]
        admitted = view.admitted_groups(cache.name)
        group = next((g for g in cache.node_groups if g in admitted), None)
        if group is None:  # nothing asked for, nothing to offer: run as without a cache
            return Verdict(
                True,
                mutated=_unbound(isvc, settings),
                warnings=(
                    f"LocalModelCache {cache.name} is placed on none of its node groups (see its "
                    "Admitted conditions): the model downloads from its source",
                ),
            )
    else:
        matching = [c for c in candidates if wanted in c.node_groups]
        if not matching:
            first = candidates[0]
            return _deny(
                422,
                f"{who} asks for node group {wanted!r} ({NODE_GROUP_ANNOTATION}), but "
                f"LocalModelCache {first.name} caches {first.source_model_uri} on "
                f"{', '.join(first.node_groups)} only: set the annotation to one of them, add "
                f'{wanted} to the cache\'s nodeGroups, or annotate {DISABLE_ANNOTATION}: "true"',
            )
        cache, group = matching[0], str(wanted)
        if group not in view.admitted_groups(cache.name):
            reason = (
                "which does not exist"
                if group not in view.groups
                else f"where the model is not placed (see the cache's Admitted-{group} condition)"
            )
            return _deny(
                422,
                f"{who} asks for LocalModelCache {cache.name} on node group {group}, {reason}: "
                f"choose another group with {NODE_GROUP_ANNOTATION}",
            )
    try:
        gpus = requested_gpus(isvc, settings.gpu_resource)
    except FieldError as e:
        return _deny(422, f"{who}: spec.predictor {e.field}: {e.reason}")
    members = view.group_members(group)
    holders = view.placement_of(cache.name, group)
    warnings: list[str] = []
    if gpus:
        offered = _largest_gpu_node(view, members)
        if offered is not None and gpus > offered[1]:
            return _deny(
                422,
                f"{who} requests {gpus} {settings.gpu_resource} per pod, but the largest node of "
                f"group {group} ({offered[0]}) offers {offered[1]}: lower the request or choose "
                f"another group with {NODE_GROUP_ANNOTATION}",
            )
        fitting_holder = _largest_gpu_node(view, holders)
        if holders and fitting_holder is not None and gpus > fitting_holder[1]:
            warnings.append(
                f"no node of group {group} that holds {cache.name} yet offers {gpus} "
                f"{settings.gpu_resource}: pods stay Pending until a larger node has the model"
            )
    if not holders:
        warnings.append(
            f"no node of group {group} holds {cache.source_model_uri} yet: pods stay Pending "
            f"until a download finishes and the node is labelled "
            f"{model_node_label(cache.storage_key)}={DOWNLOADED}"
        )
    message = f"bound to LocalModelCache {cache.name} on node group {group}"
    return Verdict(
        True, message, mutated=_bound(isvc, cache, group, settings), warnings=(*warnings,)
    )


def _largest_gpu_node(view: AdmissionView, nodes: Sequence[str]) -> tuple[str, int] | None:
    best: tuple[str, int] | None = None
    for node in nodes:
        gpus = view.node_allocatable_gpus(node)
        if gpus is not None and (best is None or gpus > best[1]):
            best = (node, gpus)
    return best


def _bound(
    isvc: Mapping[str, Any], cache: ModelCache, group: str, settings: BindingSettings
) -> JsonObject:
    result = _unbound(isvc, settings)
    meta = _child(result, "metadata")
    _child(meta, "labels")[LOCAL_MODEL_LABEL] = cache.name
    annotations = _child(meta, "annotations")
    annotations[SOURCE_URI_ANNOTATION] = cache.source_model_uri
    annotations[PVC_NAME_ANNOTATION] = settings.pvc_name(cache.name, group)
    predictor = _child(_child(result, "spec"), "predictor")
    affinity = _child(_child(predictor, "affinity"), "nodeAffinity")
    required = _child(affinity, "requiredDuringSchedulingIgnoredDuringExecution")
    ours = [
        {"key": model_node_label(cache.storage_key), "operator": "In", "values": [DOWNLOADED]},
        {"key": settings.node_group_label, "operator": "In", "values": [group]},
    ]
    # Terms are ORed, expressions within a term ANDed: ours join every term the user wrote.
    terms = _list(required.get("nodeSelectorTerms")) or [{}]
    required["nodeSelectorTerms"] = [
        {**_dict(t), "matchExpressions": [*_list(_dict(t).get("matchExpressions")), *ours]}
        for t in terms
    ]
    return result


def _child(parent: JsonObject, key: str) -> JsonObject:
    """parent[key] as a map, created when missing (or null)."""
    value = parent.get(key)
    if not isinstance(value, dict):
        value = parent[key] = {}
    return value


def _unbound(isvc: Mapping[str, Any], settings: BindingSettings) -> JsonObject:
    """A copy without any binding: KServe's metadata and our affinity expressions removed."""
    result: JsonObject = copy.deepcopy(dict(isvc))
    meta = result.get("metadata")
    if isinstance(meta, dict):
        for key, names in (
            ("labels", (LOCAL_MODEL_LABEL,)),
            ("annotations", (SOURCE_URI_ANNOTATION, PVC_NAME_ANNOTATION)),
        ):
            if isinstance(meta.get(key), dict):
                for name in names:
                    meta[key].pop(name, None)
    predictor = _dict(_dict(result.get("spec")).get("predictor"))
    path = ("affinity", "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution")
    required = _dict(_dict(_dict(predictor.get(path[0])).get(path[1])).get(path[2]))
    terms = required.get("nodeSelectorTerms")
    if isinstance(required, dict) and isinstance(terms, list):
        kept = [_without_ours(t, settings.node_group_label) for t in terms]
        if kept != terms:
            required["nodeSelectorTerms"] = [t for t in kept if t]
            if not required["nodeSelectorTerms"]:  # only ours were there: drop what we created
                del required["nodeSelectorTerms"]
                _prune(predictor, path)
    return result


def _prune(parent: object, path: Sequence[str]) -> None:
    """Remove the maps along `path` that are left empty, deepest first."""
    child = _dict(parent).get(path[0]) if path else None
    if isinstance(parent, dict) and isinstance(child, dict):
        _prune(child, path[1:])
        if not child:
            del parent[path[0]]


def _without_ours(term: object, group_label: str) -> object:
    """The term without the pair we add: the per-model expression, and the single-group one that
    came with it (recognised by the per-model one being there)."""
    expressions = _list(_dict(term).get("matchExpressions"))
    keys = [str(_dict(e).get("key", "")) for e in expressions]
    if not isinstance(term, dict) or not any(k.startswith(MODEL_LABEL_PREFIX) for k in keys):
        return term
    result = {k: v for k, v in term.items() if k != "matchExpressions"}
    if kept := [e for e in expressions if not _is_ours(_dict(e), group_label)]:
        result["matchExpressions"] = kept
    return result


def _is_ours(expression: Mapping[str, Any], group_label: str) -> bool:
    key, values = str(expression.get("key", "")), _list(expression.get("values"))
    pin = key == group_label and expression.get("operator") == "In" and len(values) == 1
    return key.startswith(MODEL_LABEL_PREFIX) or pin


__all__ = [
    "AdmissionView",
    "BindingSettings",
    "Verdict",
    "admit_cache",
    "bind_inference_service",
    "model_node_label",
    "predictor_storage_uri",
    "requested_gpus",
    "uri_matches",
]
