"""Every kustomization under daemonset/ renders with `kubectl kustomize` and every object in it
validates against the Kubernetes schemas of the newest version kubernetes-validate bundles, in
strict mode (an unknown field, e.g. a typo, fails as the API server's strict field validation
would)."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from kubernetes_validate.utils import latest_version  # type: ignore[import-untyped]

from tests.manifests.tools import DAEMONSET, kustomizations, label, render

# Kinds whose schemas live in other projects' CRDs (cert-manager, Prometheus operator): not in
# kubernetes-validate's bundle, checked for their cross-references in test_workloads.py.
THIRD_PARTY = {
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
KUBERNETES = latest_version()


def test_validating_against_a_current_kubernetes() -> None:
    major, minor = (int(x) for x in KUBERNETES.split(".")[:2])
    assert (major, minor) >= (1, 33), f"kubernetes-validate only bundles up to {KUBERNETES}"


@pytest.mark.parametrize("directory", kustomizations(), ids=label)
def test_renders_and_validates(directory: Path) -> None:
    docs = render(directory)
    assert docs, f"{label(directory)} renders nothing"
    errors = []
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in THIRD_PARTY:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(map(str, e.path))
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {e.message}")
    assert errors == []


def test_the_install_kustomization_holds_everything_but_the_opt_ins() -> None:
    kinds = {d["kind"] for d in render(DAEMONSET)}
    assert {"Namespace", "CustomResourceDefinition", "Deployment", "DaemonSet"} <= kinds
    # These need cert-manager / the Prometheus operator: opt-in, never in the main install.
    assert not kinds & {k for _, k in THIRD_PARTY}
