"""The rendered install, read as an operator's checklist: hardened pods, one agent DaemonSet per
pool that claims only its own pods, names that point at things that exist, least-privilege RBAC."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from modelcache.coordinator.leading import LEADER, LEADER_LABEL
from tests.manifests.tools import DAEMONSET, render

NODE_GROUP_LABEL = "serving.kserve.io/nodegroup"
OVERLAYS = sorted(p.name for p in (DAEMONSET / "agent" / "overlays").iterdir() if p.is_dir())
Obj = dict[str, Any]
RUNTIME_LABELS = {"modelcache-coordinator": {LEADER_LABEL: LEADER}}
"""Labels a workload's pods take while running: the coordinator's leader labels its own pod."""


def _everything() -> list[Obj]:
    return [
        *render(DAEMONSET),
        *render(DAEMONSET / "webhooks"),
        *render(DAEMONSET / "monitoring"),
    ]


def _of(kind: str) -> list[Obj]:
    return [d for d in _everything() if d["kind"] == kind]


def _one(kind: str, name: str) -> Obj:
    (found,) = [d for d in _of(kind) if d["metadata"]["name"] == name]
    return found


def _workloads() -> Iterator[Obj]:
    yield from _of("Deployment")
    yield from _of("DaemonSet")


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _env(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("workload", list(_workloads()), ids=lambda w: w["metadata"]["name"])
def test_pods_are_hardened(workload: Obj) -> None:
    pod = workload["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the images' USER
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        assert set(context["capabilities"].get("add", [])) <= {"CHOWN"}
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) == {"cpu", "memory"}, container["name"]
    for container in pod["containers"]:
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] in ports
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) in ports.values()


def test_only_the_chown_step_runs_as_root() -> None:
    for workload in _workloads():
        for container in workload["spec"]["template"]["spec"].get("initContainers", []):
            assert container["command"][0] == "chown"
            assert "-R" not in container["command"]  # never a walk of a full cache
            assert container["securityContext"]["capabilities"]["add"] == ["CHOWN"]


def test_one_agent_daemonset_per_overlay_on_its_own_nodes() -> None:
    daemonsets = {d["metadata"]["name"]: d for d in _of("DaemonSet")}
    # An overlay left out of daemonset/kustomization.yaml fails here.
    assert sorted(daemonsets) == [f"modelcache-agent-{g}" for g in OVERLAYS]
    assert OVERLAYS, "no agent overlays"
    for group in OVERLAYS:
        pod = daemonsets[f"modelcache-agent-{group}"]["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {NODE_GROUP_LABEL: group}
        assert {"key": "nvidia.com/gpu", "operator": "Exists"} in pod["tolerations"]


def test_no_agent_daemonset_claims_another_pools_pods() -> None:
    daemonsets = _of("DaemonSet")
    for owner in daemonsets:
        selector = owner["spec"]["selector"]["matchLabels"]
        for other in daemonsets:
            claimed = _matches(selector, other["spec"]["template"]["metadata"]["labels"])
            assert claimed == (owner is other), (
                owner["metadata"]["name"],
                other["metadata"]["name"],
            )


def test_the_agent_finds_its_node_coordinator_and_cache() -> None:
    service = _one("Service", "modelcache-coordinator")
    port = {p["name"]: p["port"] for p in service["spec"]["ports"]}["http"]
    namespace = service["metadata"]["namespace"]
    for daemonset in _of("DaemonSet"):
        pod = daemonset["spec"]["template"]["spec"]
        (agent,) = pod["containers"]
        env = _env(agent)
        assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        assert env["MODELCACHE_COORDINATOR"]["value"] == (
            f"http://modelcache-coordinator.{namespace}.svc:{port}"
        )
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
        (host_volume,) = [v for v in pod["volumes"] if "hostPath" in v]
        mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
        assert env["MODELCACHE_CACHE_ROOT"]["value"] == mounts[host_volume["name"]]
        (init,) = pod["initContainers"]
        assert init["command"][-1] == mounts[host_volume["name"]]
        cache_mount = next(m for m in agent["volumeMounts"] if m["name"] == host_volume["name"])
        assert cache_mount.get("readOnly") is not True
        # The token the coordinator reviews: projected for its audience at --token-file's default.
        assert mounts["coordinator-token"] == "/var/run/secrets/tokens"
        (token_volume,) = [v for v in pod["volumes"] if v["name"] == "coordinator-token"]
        (source,) = token_volume["projected"]["sources"]
        assert source["serviceAccountToken"]["audience"] == "modelcache"
        assert source["serviceAccountToken"]["path"] == "modelcache-token"


def test_peers_reach_the_agent_where_it_listens() -> None:
    """The address an agent registers is where the agents of its group fetch chunks: its own
    pod IP (defined before the variable that expands it) and the port it listens on."""
    for daemonset in _of("DaemonSet"):
        (agent,) = daemonset["spec"]["template"]["spec"]["containers"]
        names = [e["name"] for e in agent["env"]]
        env = _env(agent)
        assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert names.index("POD_IP") < names.index("MODELCACHE_ADVERTISE_URL")
        listen_port = int(env["MODELCACHE_LISTEN"]["value"].rsplit(":", 1)[1])
        assert env["MODELCACHE_ADVERTISE_URL"]["value"] == f"http://$(POD_IP):{listen_port}"
        assert listen_port in {p["containerPort"] for p in agent["ports"]}


def test_the_cache_hostpath_is_set_in_exactly_one_place() -> None:
    sources = [p for p in DAEMONSET.rglob("*.yaml") if "hostPath:" in p.read_text()]
    assert [p.relative_to(DAEMONSET).as_posix() for p in sources] == ["agent/base/daemonset.yaml"]
    assert sources[0].read_text().count("hostPath:") == 1


def test_the_coordinator_runs_two_replicas_that_a_drain_cannot_both_take() -> None:
    deployment = _one("Deployment", "modelcache-coordinator")
    assert deployment["spec"]["replicas"] == 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["--store", "kube", "--listen", "0.0.0.0:8080"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    webhook_port = next(p for p in container["ports"] if p["name"] == "webhook")["containerPort"]
    assert env["MODELCACHE_WEBHOOK_LISTEN"] == f"0.0.0.0:{webhook_port}"
    budget = _one("PodDisruptionBudget", "modelcache-coordinator")
    assert budget["spec"]["minAvailable"] == 1
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _matches(budget["spec"]["selector"]["matchLabels"], labels)


def test_the_coordinator_service_reaches_the_leader_while_both_replicas_are_ready() -> None:
    """Both replicas pass /readyz (a standby too), so minAvailable 1 lets a drain evict either
    (disruptionsAllowed = 2 healthy - 1); the Service also selects the label the leader puts on
    its own pod, so agents and users reach the leader alone."""
    deployment = _one("Deployment", "modelcache-coordinator")
    template = deployment["spec"]["template"]["metadata"]["labels"]
    assert LEADER_LABEL not in template, "the leader sets it; a static one would select both"
    selector = _one("Service", "modelcache-coordinator")["spec"]["selector"]
    assert selector[LEADER_LABEL] == LEADER
    assert _matches(selector, {**template, LEADER_LABEL: LEADER})
    assert not _matches(selector, template)  # a standby's pod
    budget = _one("PodDisruptionBudget", "modelcache-coordinator")["spec"]
    assert LEADER_LABEL not in budget["selector"]["matchLabels"]  # it counts both replicas
    assert deployment["spec"]["replicas"] - budget["minAvailable"] >= 1
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = _env(container)
    # The pod the leader labels, and the namespace its Role lets it patch pods in.
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    role = _one("Role", "modelcache-coordinator-leader-election")
    assert role["metadata"]["namespace"] == deployment["metadata"]["namespace"]


def test_services_select_pods_and_name_their_ports() -> None:
    for service in _of("Service"):
        matched = [
            w
            for w in _workloads()
            if _matches(
                service["spec"]["selector"],
                {
                    **w["spec"]["template"]["metadata"]["labels"],
                    **RUNTIME_LABELS.get(w["metadata"]["name"], {}),
                },
            )
        ]
        assert matched, f"Service {service['metadata']['name']} selects no pods"
        for workload in matched:
            names = {
                p["name"]
                for c in workload["spec"]["template"]["spec"]["containers"]
                for p in c["ports"]
            }
            assert {p["targetPort"] for p in service["spec"]["ports"]} <= names


def test_service_monitors_scrape_existing_service_ports() -> None:
    monitors = _of("ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {
        "modelcache-agent",
        "modelcache-coordinator",
    }
    for monitor in monitors:
        services = [
            s
            for s in _of("Service")
            if _matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        assert len(services) == 1, monitor["metadata"]["name"]
        ports = {p["name"] for p in services[0]["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports


def _rules(kind: str, name: str) -> list[Obj]:
    rules: list[Obj] = _one(kind, name)["rules"]
    return rules


def _allows(rules: list[Obj], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules
    )


def test_the_agent_may_only_get_nodes() -> None:
    assert _rules("ClusterRole", "modelcache-agent") == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}
    ]


def test_the_coordinator_has_what_its_code_uses() -> None:
    rules = _rules("ClusterRole", "modelcache-coordinator")
    group = "serving.kserve.io"
    for resource in ("localmodelcaches", "localmodelnodegroups", "localmodelnodes"):
        for verb in ("get", "list", "watch", "update", "patch"):
            assert _allows(rules, group, resource, verb), (resource, verb)
        assert _allows(rules, group, f"{resource}/status", "patch")
    assert _allows(rules, group, "localmodelnodes", "create")
    assert _allows(rules, group, "localmodelnodes", "delete")
    for verb in ("get", "list", "watch", "patch"):
        assert _allows(rules, "", "nodes", verb)
    assert not _allows(rules, "", "nodes", "delete")
    assert _allows(rules, "authentication.k8s.io", "tokenreviews", "create")
    for verb in ("list", "watch"):  # InferenceServices still using a cache
        assert _allows(rules, group, "inferenceservices", verb)
    assert _allows(rules, "", "events", "create")
    election = _rules("Role", "modelcache-coordinator-leader-election")
    assert _allows(election, "coordination.k8s.io", "leases", "create")
    assert _allows(election, "coordination.k8s.io", "leases", "update")
    assert _allows(election, "", "pods", "patch")  # the leader label, in its namespace only
    assert not _allows(rules, "", "pods", "patch")


def test_no_rbac_rule_uses_wildcards() -> None:
    for role in _of("ClusterRole") + _of("Role"):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], role["metadata"]["name"]


def test_bindings_name_the_service_accounts_the_pods_run_as() -> None:
    accounts = {(a["metadata"]["namespace"], a["metadata"]["name"]) for a in _of("ServiceAccount")}
    for binding in _of("ClusterRoleBinding") + _of("RoleBinding"):
        for subject in binding["subjects"]:
            assert (subject["namespace"], subject["name"]) in accounts
        kind = binding["roleRef"]["kind"]
        assert _one(kind, binding["roleRef"]["name"])
    for workload in _workloads():
        used = workload["spec"]["template"]["spec"]["serviceAccountName"]
        assert (workload["metadata"]["namespace"], used) in accounts


def test_webhooks_reach_the_coordinator_with_a_trusted_certificate() -> None:
    certificate = _one("Certificate", "modelcache-webhook")
    namespace = certificate["metadata"]["namespace"]
    service = _one("Service", "modelcache-coordinator")
    service_ports = {p["port"]: p["targetPort"] for p in service["spec"]["ports"]}
    (container,) = _one("Deployment", "modelcache-coordinator")["spec"]["template"]["spec"][
        "containers"
    ]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    paths = {}
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        (configuration,) = _of(kind)
        annotation = configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        assert annotation == f"{namespace}/{certificate['metadata']['name']}"
        for webhook in configuration["webhooks"]:
            target = webhook["clientConfig"]["service"]
            assert (target["namespace"], target["name"]) == (namespace, service["metadata"]["name"])
            assert container_ports[service_ports[target["port"]]] == 9443
            assert webhook["failurePolicy"] == "Ignore"  # nothing serves them yet (issue 5)
            paths[target["path"]] = webhook["rules"][0]["resources"][0]
    assert paths == {
        "/validate-localmodelcache": "localmodelcaches",
        "/mutate-inferenceservice": "inferenceservices",
    }
    assert f"modelcache-coordinator.{namespace}.svc" in certificate["spec"]["dnsNames"]
    assert _one("Issuer", certificate["spec"]["issuerRef"]["name"])
    volumes = _one("Deployment", "modelcache-coordinator")["spec"]["template"]["spec"]["volumes"]
    secrets = {v["secret"]["secretName"] for v in volumes if "secret" in v}
    assert certificate["spec"]["secretName"] in secrets
