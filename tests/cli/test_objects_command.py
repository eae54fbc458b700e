"""`modelcache apply`, `get` and `delete` as a user runs them: a real subprocess against a real
coordinator (embedded store, HTTP on a free port), whose state is then read over REST."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from modelcache.cli.apply_command import in_apply_order, parse_manifests
from modelcache.cli.objects_command import coordinator_endpoint, resource_named
from modelcache.cli.tables import age, human_bytes, render_table
from modelcache.contract.errors import UsageError
from tests.coordinator.conftest import Api, GiB, cache, fast_settings, node_group, serving

LLAMA = "hf://meta-llama/meta-llama-3-8b-instruct"
PHI = "hf://microsoft/phi-3"
CACHE_THEN_GROUP = f"""\
# the cache comes first, yet its group must exist when it is applied
apiVersion: serving.kserve.io/v1alpha1
kind: LocalModelCache
metadata:
  name: llama3
spec:
  sourceModelUri: {LLAMA}
  modelSize: 16Gi
  nodeGroups: [a100]
---
apiVersion: serving.kserve.io/v1alpha1
kind: LocalModelNodeGroup
metadata:
  name: a100
spec:
  storageLimit: 80Gi
---
"""


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    # Nodes registered in a test stay Ready while the CLI subprocesses start.
    settings = fast_settings(
        tmp_path / "db", heartbeat_timeout=30.0, not_ready_deletion_timeout=60.0
    )
    async with serving(settings) as running:
        yield running


async def run_cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    inherited = {k: v for k, v in os.environ.items() if k != "MODELCACHE_COORDINATOR"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "modelcache",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**inherited, **(env or {})},
    )
    try:
        async with asyncio.timeout(30):
            out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    finally:
        if proc.returncode is None:  # timed out or cancelled: leave no process behind
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def cli(api: Api, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    return await run_cli(*args, "--coordinator", api.url, stdin=stdin)


def table(out: str) -> list[list[str]]:
    """The cells of a table, read by the header's column offsets, so misalignment shows."""
    header, *rows = out.splitlines()
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    ends = [*starts[1:], None]
    cells = [
        [line[a:b].strip() for a, b in zip(starts, ends, strict=True)] for line in out.splitlines()
    ]
    for line, row in zip([header, *rows], cells, strict=True):
        assert line.split() == row, f"misaligned: {line!r}"
    return cells


async def test_apply_creates_node_groups_first_and_a_second_apply_configures(
    api: Api, tmp_path: Path
) -> None:
    manifest = tmp_path / "llama3.yaml"
    manifest.write_text(CACHE_THEN_GROUP)
    created = await cli(api, "apply", "-f", str(manifest))
    assert created == (0, "localmodelnodegroup/a100 created\nlocalmodelcache/llama3 created\n", "")
    stored = await api.call("GET", "/v1/localmodelcaches/llama3")
    assert stored["status"]["nodeGroupStatus"]["a100"]["admitted"] is True
    conditions = {c["type"]: c["status"] for c in stored["status"]["conditions"]}
    assert conditions["Admitted-a100"] == "True"
    group = await api.call("GET", "/v1/localmodelnodegroups/a100")
    assert group["spec"]["storageLimit"] == "80Gi"
    again = await cli(api, "apply", "-f", str(manifest))
    assert again == (
        0,
        "localmodelnodegroup/a100 configured\nlocalmodelcache/llama3 configured\n",
        "",
    )


async def test_apply_reads_stdin_and_repeated_files_with_the_url_from_the_environment(
    api: Api, tmp_path: Path
) -> None:
    groups = tmp_path / "groups.yaml"
    groups.write_text(yaml.safe_dump(node_group("h100", "40Gi")))
    code, out, err = await run_cli(
        "apply",
        "-f",
        "-",
        "-f",
        str(groups),
        stdin=yaml.safe_dump(cache("phi", PHI, "8Gi", "h100")),
        env={"MODELCACHE_COORDINATOR": api.url},
    )
    assert (code, err) == (0, "")
    assert out == "localmodelnodegroup/h100 created\nlocalmodelcache/phi created\n"
    stored = await api.call("GET", "/v1/localmodelcaches/phi")
    assert stored["spec"]["nodeGroups"] == ["h100"]


async def test_an_invalid_object_is_reported_and_the_rest_still_applied(
    api: Api, tmp_path: Path
) -> None:
    documents = [
        cache("bad", LLAMA, "lots", "a100"),
        cache("phi", PHI, "8Gi", "a100", "h100"),  # h100 does not exist: created, not admitted
        node_group("a100", "80Gi"),
    ]
    manifest = tmp_path / "mixed.yaml"
    manifest.write_text(yaml.safe_dump_all(documents))
    code, out, err = await cli(api, "apply", "-f", str(manifest))
    assert code == 1
    assert out == "localmodelnodegroup/a100 created\nlocalmodelcache/phi created\n"
    error, warning = err.splitlines()
    assert error.startswith("modelcache: error: localmodelcache/bad: spec.modelSize: ")
    assert "'lots'" in error
    assert warning.startswith(
        "modelcache: warning: localmodelcache/phi: node group h100 does not exist: create a "
        "LocalModelNodeGroup named 'h100'"
    )
    await api.call("GET", "/v1/localmodelcaches/bad", expect=404)
    await api.call("GET", "/v1/localmodelcaches/phi")


async def test_an_unknown_kind_exits_2_naming_the_document_and_sends_nothing(
    api: Api, tmp_path: Path
) -> None:
    manifest = tmp_path / "mixed.yaml"
    group = yaml.safe_dump(node_group("a100", "80Gi"))
    manifest.write_text(f"{group}---\nkind: Deployment\nmetadata: {{name: web}}\n")
    code, out, err = await cli(api, "apply", "-f", str(manifest))
    assert (code, out) == (2, "")
    assert err.splitlines()[-1] == (
        f"modelcache: error: {manifest}: document 2: kind 'Deployment' cannot be applied: "
        "use LocalModelCache or LocalModelNodeGroup"
    )
    assert (await api.call("GET", "/v1/localmodelnodegroups"))["items"] == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "kind: LocalModelNodeGroup\nmetadata: {}\n",
            "document 2 (LocalModelNodeGroup): metadata.name: is required",
        ),
        ("metadata: {name: a}\n", "document 2: has no kind: use LocalModelCache or"),
        ("- a list\n", "document 2: is a list, not an object with a kind"),
        (
            "kind: [LocalModelCache\n",
            "document 2: invalid YAML: expected ',' or ']', but got "
            "'<stream end>' at line 9, column 1",
        ),
        ("kind: LocalModelCache\nmetadata: {name: Llama3}\n", "'Llama3' is not a valid name"),
    ],
)
def test_documents_are_checked_before_anything_is_sent(text: str, message: str) -> None:
    group = yaml.safe_dump(node_group("a100", "80Gi"))
    with pytest.raises(UsageError) as raised:
        parse_manifests([("x.yaml", f"{group}---\n{text}")])
    assert str(raised.value).startswith("x.yaml: document 2")
    assert message in str(raised.value)


def test_documents_are_applied_node_groups_first_in_file_order() -> None:
    manifests = parse_manifests(
        [("a.yaml", CACHE_THEN_GROUP), ("b.yaml", yaml.safe_dump(node_group("h100", "8Gi")))]
    )
    assert [m.where for m in manifests] == [
        "a.yaml: document 1",
        "a.yaml: document 2",
        "b.yaml: document 1",
    ]
    ordered = in_apply_order(manifests)
    assert [m.resource.ref(m.name) for m in ordered] == [
        "localmodelnodegroup/a100",
        "localmodelnodegroup/h100",
        "localmodelcache/llama3",
    ]


@pytest.mark.parametrize(
    ("words", "plural"),
    [
        (("cache", "caches", "LocalModelCache", "localmodelcaches", "lmc"), "localmodelcaches"),
        (
            ("nodegroup", "nodegroups", "localmodelnodegroup", "LocalModelNodeGroups"),
            "localmodelnodegroups",
        ),
        (("node", "nodes", "localmodelnode", "localmodelnodes"), "localmodelnodes"),
    ],
)
def test_object_types_take_kubectl_style_names(words: tuple[str, ...], plural: str) -> None:
    assert {resource_named(word).plural for word in words} == {plural}


def test_unknown_types_and_nodes_cannot_be_deleted() -> None:
    with pytest.raises(UsageError, match="unknown object type 'widgets'"):
        resource_named("widgets")
    with pytest.raises(UsageError, match="LocalModelNodes cannot be deleted"):
        resource_named("node", deleting=True)
    assert resource_named("lmc", deleting=True).plural == "localmodelcaches"


async def _cluster(api: Api) -> None:
    """Two groups; llama3 fits a100 only; one node per state worth showing."""
    await api.put(node_group("a100", "80Gi"))
    await api.put(node_group("h100", "8Gi"))
    await api.put(cache("llama3", LLAMA, "16Gi", "a100", "h100"))
    await api.put(cache("phi", PHI, "4Gi", "h100"))
    for node, group in (("gpu-a100-0", "a100"), ("gpu-a100-1", "a100"), ("gpu-h100-0", "h100")):
        await api.register(node, group)
    await api.report("gpu-a100-0", {LLAMA: "ModelDownloaded"})
    await api.report("gpu-a100-1", {LLAMA: "ModelDownloading"})
    await api.report("gpu-h100-0", {PHI: "ModelDownloaded"})


async def test_get_prints_tables_with_live_readiness(api: Api) -> None:
    await _cluster(api)
    caches, groups, nodes, one = await asyncio.gather(
        cli(api, "get", "caches"),
        cli(api, "get", "nodegroups"),
        cli(api, "get", "localmodelnodes"),
        cli(api, "get", "lmc", "phi"),
    )
    assert all(code == 0 and err == "" for code, _, err in (caches, groups, nodes, one))
    rows = table(caches[1])
    assert rows[0] == ["NAME", "READY", "GROUPS", "SIZE", "AGE"]
    assert [r[:4] for r in rows[1:]] == [
        ["llama3", "1/2", "a100:1/2,h100:refused", "16Gi"],
        ["phi", "1/1", "h100:1/1", "4Gi"],
    ]
    assert all(r[4].endswith("s") and r[4][:-1].isdigit() for r in rows[1:])
    rows = table(groups[1])
    assert rows[0] == ["NAME", "STORAGE-LIMIT", "USED", "AVAILABLE", "NODES", "AGE"]
    assert [r[:5] for r in rows[1:]] == [
        ["a100", "80Gi", "16Gi", "64Gi", "2"],
        ["h100", "8Gi", "4Gi", "4Gi", "1"],
    ]
    assert table(nodes[1]) == [
        ["NAME", "READY", "MODELS", "DISK-FREE"],
        ["gpu-a100-0", "True", "1/1", "100Gi"],
        ["gpu-a100-1", "True", "0/1", "100Gi"],
        ["gpu-h100-0", "True", "1/1", "100Gi"],
    ]
    assert [r[:3] for r in table(one[1])] == [
        ["NAME", "READY", "GROUPS"],
        ["phi", "1/1", "h100:1/1"],
    ]


async def test_get_prints_json_and_yaml_and_missing_objects_fail(api: Api) -> None:
    await _cluster(api)
    as_json, as_yaml, missing = await asyncio.gather(
        cli(api, "get", "cache", "llama3", "-o", "json"),
        cli(api, "get", "nodegroup", "-o", "yaml"),
        cli(api, "get", "localmodelnodegroup", "h200"),
    )
    assert as_json[0] == 0
    printed = json.loads(as_json[1])
    stored = await api.call("GET", "/v1/localmodelcaches/llama3")
    assert printed["metadata"] == stored["metadata"]
    assert printed["spec"] == stored["spec"]
    assert printed["status"]["copies"] == {"total": 2, "available": 1, "failed": 0}
    assert as_yaml[0] == 0
    listing = yaml.safe_load(as_yaml[1])
    assert listing["kind"] == "LocalModelNodeGroupList"
    assert [i["metadata"]["name"] for i in listing["items"]] == ["a100", "h100"]
    assert listing["items"][0]["status"]["nodes"] == ["gpu-a100-0", "gpu-a100-1"]
    assert missing == (
        1,
        "",
        "modelcache: error: LocalModelNodeGroup h200 does not exist; "
        "`modelcache get nodegroups` lists them\n",
    )


async def test_delete_says_whether_nodes_still_remove_files(api: Api) -> None:
    await _cluster(api)
    cache_deleted, group_deleted = await asyncio.gather(
        cli(api, "delete", "cache", "llama3"),
        cli(api, "delete", "localmodelnodegroup", "h100"),
    )
    assert cache_deleted == (
        0,
        "localmodelcache/llama3 deletion started: waiting for nodes to remove the files\n",
        "",
    )
    still = await api.call("GET", "/v1/localmodelcaches/llama3")  # gpu-a100-0 holds the files
    assert still["metadata"]["deletionTimestamp"]
    assert group_deleted == (0, "localmodelnodegroup/h100 deleted\n", "")
    await api.call("GET", "/v1/localmodelnodegroups/h100", expect=404)


async def test_an_unreachable_coordinator_says_how_to_point_at_one() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    assert await run_cli("get", "caches", env={"MODELCACHE_COORDINATOR": dead}) == (
        1,
        "",
        f"modelcache: error: cannot reach the coordinator at {dead}: connection refused; "
        "start it or pass --coordinator\n",
    )


def test_the_coordinator_flag_wins_over_the_environment() -> None:
    env = {"MODELCACHE_COORDINATOR": "http://coordinator.modelcache:8080/"}
    flag = argparse.Namespace(coordinator="http://10.0.0.7:8080")
    assert coordinator_endpoint(flag, env).url == "http://10.0.0.7:8080"
    no_flag = argparse.Namespace(coordinator=None)
    assert coordinator_endpoint(no_flag, env).url == "http://coordinator.modelcache:8080"
    assert coordinator_endpoint(no_flag, {}).url == "http://127.0.0.1:8080"
    with pytest.raises(UsageError, match="not an http:// or https:// URL"):
        coordinator_endpoint(argparse.Namespace(coordinator="127.0.0.1:8080"), {})


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0s"),
        (45, "45s"),
        (12 * 60 + 59, "12m"),
        (3 * 3600 + 3599, "3h"),
        (5 * 86400, "5d"),
        (800 * 86400, "2y"),
    ],
)
def test_age_is_kubectls_short_form(seconds: int, expected: str) -> None:
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    created = (now - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert age(created, now) == expected


def test_table_cells_are_compact_and_aligned() -> None:
    assert [human_bytes(n) for n in (512, 1536, 100 * GiB, None)] == [
        "512",
        "1.5Ki",
        "100Gi",
        "<unknown>",
    ]
    assert age(None, datetime.now(UTC)) == "<unknown>"
    rendered = render_table(("NAME", "READY"), [["llama3", "1/2"], ["a", "0/0"]])
    assert rendered == "NAME     READY\nllama3   1/2\na        0/0\n"
