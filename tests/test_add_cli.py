"""`authd add user|role` against the fake API server over HTTPS, as the installed command.

Each test runs the real console script with a kubeconfig for the fake (or, for the concurrent
edit, `add_mapping` on a real client whose transport lets "another client" write between the
GET and the PUT), then reads the result back with kubectl and with the daemon's own parser.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from authd.cli.add import NewMapping, Outcome, add_mapping, appended
from authd.errors import ConfigError
from authd.mapping.configmap import parse_configmap
from authd.server.kube.connection import Connection, open_client
from tests.conftest import RunAuthd
from tests.fakes.apiserver import ADMIN_TOKEN, FakeApiServer, User, rule
from tests.kubehelpers import identity
from tests.test_fake_apiserver import Kubectl

NODES = "arn:aws:iam::111122223333:role/nodes"
ALICE = "arn:aws:iam::111122223333:user/alice"
ADMINS = "arn:aws:iam::111122223333:role/Admins"
MAP_ROLES = f"""\
# node role, managed by eksctl
- rolearn: {NODES}
  username: system:node:{{{{EC2PrivateDNSName}}}}
  groups: [system:bootstrappers, system:nodes]
"""


def aws_auth(map_roles: str = MAP_ROLES, **data: str) -> dict[str, Any]:
    """An aws-auth ConfigMap object with `mapRoles` and any other data keys."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "aws-auth", "namespace": "kube-system"},
        "data": {"mapRoles": map_roles, **data},
    }


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    """The fake API server, serving an aws-auth with one role and mapAccounts."""
    with FakeApiServer() as server:
        server.put_object(aws_auth(mapAccounts="- '444455556666'\n"))
        yield server


@pytest.fixture
def add(api: FakeApiServer, tmp_path: Path, run_authd: RunAuthd) -> Callable[..., Any]:
    """Run `authd add ARGS --kubeconfig=<the fake's>` as the installed command."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}

    def run(*args: str, token: str = ADMIN_TOKEN) -> Any:
        kubeconfig = api.write_kubeconfig(tmp_path / f"kubeconfig-{token}", token=token)
        return run_authd(["add", *args, f"--kubeconfig={kubeconfig}", "--prompt=false"], env)

    return run


def data(api: FakeApiServer) -> dict[str, str]:
    """aws-auth's data as stored."""
    obj = api.get_object("ConfigMap", "aws-auth", "kube-system")
    assert obj is not None
    return dict(obj["data"])


def mapped(data: dict[str, str], arn: str) -> tuple[str, tuple[str, ...]] | None:
    """(username, groups) the EKSConfigMap backend's parser gives `arn`, or None."""
    version = parse_configmap(data)
    assert not version.rejected, version.rejected
    entry = version.table.lookup(identity(arn))
    return None if entry is None else (entry.username, tuple(entry.groups))


def test_add_user_and_role_append_and_the_backend_reads_them(
    api: FakeApiServer, add: Callable[..., Any], tmp_path: Path
) -> None:
    """add user and add role append upstream's YAML to mapUsers/mapRoles; the old text (with its
    comment) and mapAccounts stay byte for byte, and the daemon's parser maps both."""
    user = add("user", "--userarn", ALICE, "--username", "alice", "--groups", "devs,viewers")
    assert user.returncode == 0, user.stderr
    assert user.stdout.startswith("updated configmap:\n\n")
    role = add("role", "--rolearn", ADMINS, "--username", "admin", "--groups", "system:masters")
    assert role.returncode == 0, role.stderr
    stored = data(api)
    assert stored["mapRoles"].startswith(MAP_ROLES)
    assert stored["mapRoles"][len(MAP_ROLES) :] == (
        f"- rolearn: {ADMINS}\n  username: admin\n  groups:\n  - system:masters\n"
    )
    assert stored["mapUsers"] == (
        f"- userarn: {ALICE}\n  username: alice\n  groups:\n  - devs\n  - viewers\n"
    )
    assert stored["mapAccounts"] == "- '444455556666'\n"
    assert mapped(stored, ALICE) == ("alice", ("devs", "viewers"))
    assert mapped(stored, ADMINS) == ("admin", ("system:masters",))
    assert mapped(stored, NODES) == (
        "system:node:{{EC2PrivateDNSName}}",
        ("system:bootstrappers", "system:nodes"),
    )
    if shutil.which("kubectl") is not None:
        got = Kubectl(api, tmp_path).ok(
            "get", "-n", "kube-system", "configmap", "aws-auth", "-o", "json"
        )
        assert json.loads(got)["data"] == stored
    puts = [r.status for r in api.requests if r.method == "PUT"]
    assert puts == [200, 200]


def test_a_missing_aws_auth_is_created(api: FakeApiServer, add: Callable[..., Any]) -> None:
    """Without aws-auth the command creates it with the one entry, and says so on stderr."""
    api.delete_object("ConfigMap", "aws-auth", "kube-system")
    out = add("role", "--rolearn", ADMINS, "--username", "admin", "--groups", "system:masters")
    assert out.returncode == 0, out.stderr
    assert "did not exist: created it" in out.stderr
    assert mapped(data(api), ADMINS) == ("admin", ("system:masters",))


def test_a_concurrent_edit_is_retried_and_both_edits_survive(api: FakeApiServer) -> None:
    """Another client writes aws-auth between our GET and PUT: the PUT gets 409 from the
    resourceVersion precondition, the command reads again, and both entries are kept."""
    other = f"- userarn: {ALICE.replace('alice', 'bob')}\n  username: bob\n  groups: [devs]\n"
    raced: list[int] = []

    class OtherClientWritesFirst(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport(verify=api.client_context())

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.method == "PUT" and not raced:
                raced.append(1)
                await trio.to_thread.run_sync(
                    api.put_object, aws_auth(mapUsers=other, mapAccounts="- '444455556666'\n")
                )
            return await self.inner.handle_async_request(request)

        async def aclose(self) -> None:
            await self.inner.aclose()

    async def run() -> Outcome:
        connection = Connection(server=api.url, ssl_context=api.client_context(), token=ADMIN_TOKEN)
        async with open_client(connection, transport=OtherClientWritesFirst()) as client:
            mapping = NewMapping(kind="user", arn=ALICE, username="alice", groups=("devs",))
            return await add_mapping(client, mapping)

    outcome = trio.run(run)
    assert outcome.tries == 2
    assert [(r.method, r.status) for r in api.requests] == [
        ("GET", 200),
        ("PUT", 409),
        ("GET", 200),
        ("PUT", 200),
    ]
    stored = data(api)
    assert stored["mapUsers"].startswith(other)
    assert mapped(stored, ALICE) == ("alice", ("devs",))
    assert mapped(stored, ALICE.replace("alice", "bob")) == ("bob", ("devs",))


def test_it_gives_up_after_five_conflicts(api: FakeApiServer, add: Callable[..., Any]) -> None:
    """Five 409s in a row end the command with exit 1 and one line saying so."""
    api.fail_next(409, count=5, verb="update")
    out = add("user", "--userarn", ALICE, "--username", "alice", "--groups", "devs")
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1
    assert "gave up after 5 conflicting updates" in out.stderr
    assert "mapUsers" not in data(api)


def test_a_duplicate_arn_is_refused(api: FakeApiServer, add: Callable[..., Any]) -> None:
    """An ARN already under mapRoles (compared lower-cased, as the backend compares) is refused
    with one line and exit 1; aws-auth is not written."""
    before = api.get_object("ConfigMap", "aws-auth", "kube-system")
    out = add("role", "--rolearn", NODES.replace("nodes", "NODES"),
              "--username", "x", "--groups", "g")  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1
    assert "data.mapRoles[0] already maps role ARN" in out.stderr
    assert api.get_object("ConfigMap", "aws-auth", "kube-system") == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["user", "--userarn", "arn:aws:iam::nope"],
            "--userarn: arn 'arn:aws:iam::nope' is invalid",
        ),
        (
            ["role", "--rolearn", "arn:aws:sts::111122223333:assumed-role/Admins/me"],
            f"is not a canonical ARN and would never match; use {ADMINS}",
        ),
        (["user", "--userarn", ALICE, "--groups", ""], "invalid empty value"),
    ],
)
def test_bad_values_are_refused_before_any_request(
    api: FakeApiServer, add: Callable[..., Any], args: list[str], message: str
) -> None:
    """A bad or non-canonical ARN, or no groups: exit 2, one line, and no request is sent."""
    api.clear_requests()
    if "--groups" not in args:
        args = [*args, "--groups", "devs"]
    out = add(*args, "--username", "someone")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert api.requests == []


def test_forbidden_is_one_clear_line(api: FakeApiServer, add: Callable[..., Any]) -> None:
    """A token that may read but not update aws-auth: exit 1 and RBAC's 403 on one line."""
    reader = User(name="reader", rules=(rule(["get"], "configmaps", namespaces=["kube-system"]),))
    api.add_token("reader-token", reader)
    out = add(
        "user", "--userarn", ALICE, "--username", "alice", "--groups", "devs", token="reader-token"
    )
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith("could not add the user: replace /api/v1/namespaces/kube-system/")
    assert "403 Forbidden" in out.stderr
    assert 'cannot update resource "configmaps"' in out.stderr


def test_broken_yaml_is_left_alone_and_flow_lists_are_re_encoded() -> None:
    """A key that does not parse is refused (not overwritten); a flow-style list, which cannot
    be appended to as text, is re-encoded with a note, keeping its entries."""
    mapping = NewMapping(kind="role", arn=ADMINS, username="admin", groups=("g",))
    with pytest.raises(ConfigError, match=r"data\.mapRoles"):
        appended({"mapRoles": "- rolearn: [unclosed\n"}, mapping)
    flow = f"[{{rolearn: {NODES}, username: n, groups: [a]}}]"
    text, notes = appended({"mapRoles": flow}, mapping)
    assert notes and "re-encoded" in notes[0]
    assert mapped({"mapRoles": text}, NODES) == ("n", ("a",))
    assert mapped({"mapRoles": text}, ADMINS) == ("admin", ("g",))
    indented = f"  - rolearn: {NODES}\n    username: n\n"
    text, notes = appended({"mapRoles": indented}, mapping)
    assert notes == ()
    assert text == f"{indented}  - rolearn: {ADMINS}\n    username: admin\n    groups:\n    - g\n"


def test_an_sso_role_is_added_and_matched_when_the_gate_is_on(
    api: FakeApiServer, add: Callable[..., Any]
) -> None:
    """`add role --sso` writes upstream's sso block, which the backend reads; the same
    permission set again is a duplicate."""
    sso = "permissionSetName=ViewOnly,accountID=111122223333"
    out = add("role", "--sso", sso, "--username", "viewer", "--groups", "view")
    assert out.returncode == 0, out.stderr
    stored = data(api)
    assert (
        "- sso:\n    permissionSetName: ViewOnly\n    accountID: '111122223333'\n"
        in stored["mapRoles"]
    )
    version = parse_configmap(stored, sso_role_match=True)
    session = "arn:aws:iam::111122223333:role/AWSReservedSSO_ViewOnly_0123456789abcdef"
    entry = version.table.lookup(identity(session))
    assert entry is not None and entry.username == "viewer"
    again = add(
        "role", "--sso", sso.replace("ViewOnly", "viewonly"), "--username", "v", "--groups", "g"
    )
    assert again.returncode == 1
    assert "already maps SSO permission set" in again.stderr


def test_the_kubeconfig_context_flag_picks_the_context(
    api: FakeApiServer, add: Callable[..., Any]
) -> None:
    """`--kubeconfig-context` overrides the kubeconfig's current-context (an unknown one is a
    one-line error), as upstream's flag does."""
    args = ("user", "--userarn", ALICE, "--username", "alice", "--groups", "devs")
    out = add(*args, "--kubeconfig-context=elsewhere")
    assert out.returncode == 1
    assert "no context named 'elsewhere'" in out.stderr
    assert out.stderr.count("\n") == 1
    assert add(*args, "--kubeconfig-context=fake").returncode == 0
    assert mapped(data(api), ALICE) == ("alice", ("devs",))


def test_the_command_names_the_object_the_backend_follows() -> None:
    """add.py keeps its own copy of the object's name (to stay light to import): the same one
    the EKSConfigMap backend follows."""
    from authd.cli import add
    from authd.mapping import configmap

    assert (add.NAMESPACE, add.OBJECT) == (configmap.NAMESPACE, configmap.OBJECT)
