"""The mapper chain, the MountedFile table and DynamicFile parsing.

See mapping 1-7 in docs/upstream-compat.md.
"""

from __future__ import annotations

import json
import time

import pytest

from authd.config import FileConfig, MappingConfig, RoleMapping
from authd.errors import (
    AuthdError,
    ConfigError,
    MappingError,
    NotMappedError,
    ReservedPrefixError,
    TemplateError,
)
from authd.identity import Identity
from authd.mapping.chain import Backend, MapperChain
from authd.mapping.dynamicfile import DynamicFileTable
from authd.mapping.file import MountedFileTable

ACCOUNT = "000000000000"


def _role_identity(role: str = "Admin", session: str = "alice", account: str = ACCOUNT) -> Identity:
    """An assumed-role identity as token verification produces it."""
    return Identity(
        arn=f"arn:aws:sts::{account}:assumed-role/{role}/{session}",
        canonical_arn=f"arn:aws:iam::{account}:role/{role}",
        account_id=account,
        user_id=f"AROA{role.upper()}:{session}",
        session_name=session,
        access_key_id="ASIAEXAMPLE",
    )


def _mounted(yaml_text: str, *, sso: bool = False) -> MountedFileTable:
    """A MountedFile table from config text."""
    config = MappingConfig.from_file_config(FileConfig.from_text(yaml_text, path="c.yaml"))
    return MountedFileTable.from_config(config, sso_role_match=sso)


def _dynamic(document: object, *, strict: bool = False) -> DynamicFileTable:
    """A DynamicFile table from a JSON-able document."""
    return DynamicFileTable.from_bytes(
        json.dumps(document).encode(), path="dyn.json", userid_strict=strict
    )


ADMIN_ROLE = """
server:
  mapRoles:
  - rolearn: arn:aws:iam::000000000000:role/Admin
    username: admin-{{SessionName}}
    groups: [g1, "{{AccountID}}"]
"""


async def test_first_backend_that_maps_wins() -> None:
    """When two backends map the identity, the earlier one's entry is used."""
    later = _dynamic(
        {"mapRoles": [{"rolearn": "arn:aws:iam::000000000000:role/Admin", "username": "dyn"}]}
    )
    chain = MapperChain(
        [Backend("MountedFile", _mounted(ADMIN_ROLE)), Backend("DynamicFile", later)]
    )
    result = await chain.map(_role_identity())
    assert result.backend == "MountedFile"
    assert result.user.username == "admin-alice"
    assert result.user.groups == ("g1", ACCOUNT)


async def test_later_backend_maps_when_earlier_does_not() -> None:
    """An identity unknown to the first backend is mapped by the second."""
    dyn = _dynamic(
        {"mapRoles": [{"rolearn": "arn:aws:iam::000000000000:role/Other", "username": "dyn"}]}
    )
    chain = MapperChain([Backend("MountedFile", _mounted(ADMIN_ROLE)), Backend("DynamicFile", dyn)])
    result = await chain.map(_role_identity("Other"))
    assert (result.backend, result.user.username) == ("DynamicFile", "dyn")


async def test_earlier_account_allow_list_beats_later_explicit_mapping() -> None:
    """An earlier backend's mapAccounts answers before a later backend's explicit entry."""
    first = _mounted('server:\n  mapAccounts: ["000000000000"]\n')
    dyn = _dynamic(
        {"mapRoles": [{"rolearn": "arn:aws:iam::000000000000:role/Admin", "username": "dyn"}]}
    )
    result = await MapperChain([Backend("MountedFile", first), Backend("DynamicFile", dyn)]).map(
        _role_identity()
    )
    assert result.backend == "MountedFile"
    assert result.user.username == "arn:aws:iam::000000000000:role/Admin"
    assert result.user.groups == ()


async def test_account_automap_skips_templates_and_reserved_prefixes() -> None:
    """Account auto-mapping keeps the canonical ARN's case and ignores reserved prefixes."""
    table = _mounted('server:\n  mapAccounts: ["000000000000"]\n')
    backend = Backend("MountedFile", table, reserved_prefixes=["arn:"])
    result = await MapperChain([backend]).map(_role_identity("MiXeD"))
    assert result.user.username == "arn:aws:iam::000000000000:role/MiXeD"


async def test_not_mapped_anywhere() -> None:
    """No backend maps it and no account list admits it: `identity is not mapped`."""
    chain = MapperChain([Backend("MountedFile", _mounted(ADMIN_ROLE))])
    with pytest.raises(NotMappedError, match=r"^identity is not mapped$"):
        await chain.map(_role_identity("Nobody"))


async def test_lookup_errors_are_collected_and_aggregated() -> None:
    """Errors from several backends are joined as Kubernetes' aggregate error prints them."""
    strict = _dynamic(
        {
            "mapUsers": [
                {"userarn": "arn:aws:iam::000000000000:user/bob", "userid": "AROAADMIN:alice"}
            ]
        },
        strict=True,
    )
    chain = MapperChain(
        [Backend("DynamicFile", strict), Backend("MountedFile", None, problem="bad yaml")]
    )
    with pytest.raises(NotMappedError) as caught:
        await chain.map(_role_identity())
    assert str(caught.value) == (
        "[mapper DynamicFile Map error: ARN does not match User ID, "
        "mapper MountedFile Map error: backend not ready: bad yaml]"
    )


async def test_lookup_error_then_account_allowed_succeeds() -> None:
    """A lookup error in a backend whose account list admits the caller still maps it."""
    strict = _dynamic(
        {
            "mapUsers": [
                {"userarn": "arn:aws:iam::000000000000:user/bob", "userid": "AROAADMIN:alice"}
            ],
            "mapAccounts": [ACCOUNT],
        },
        strict=True,
    )
    result = await MapperChain([Backend("DynamicFile", strict)]).map(_role_identity())
    assert result.user.username == "arn:aws:iam::000000000000:role/Admin"


async def test_not_ready_backend_keeps_serving_last_good_table() -> None:
    """A backend marked not ready still answers from its last good snapshot; clear drops it."""
    backend = Backend("MountedFile", _mounted(ADMIN_ROLE))
    chain = MapperChain([backend])
    backend.mark_not_ready("config.yaml:3: parse error")
    assert not backend.ready
    assert (await chain.map(_role_identity())).user.username == "admin-alice"
    backend.clear("file deleted")
    with pytest.raises(NotMappedError, match="backend not ready: file deleted"):
        await chain.map(_role_identity())
    backend.publish(_mounted(ADMIN_ROLE))
    assert backend.ready
    assert (await chain.map(_role_identity())).user.username == "admin-alice"


async def test_reserved_prefix_denies_with_upstream_text() -> None:
    """A rendered username with a reserved prefix is denied, naming the backend and prefixes."""
    backend = Backend("MountedFile", _mounted(ADMIN_ROLE), reserved_prefixes=["", "admin-", "x:"])
    with pytest.raises(ReservedPrefixError) as caught:
        await MapperChain([backend]).map(_role_identity())
    assert str(caught.value) == (
        "invalid username 'admin-alice' for mapper MountedFile: username must not begin with "
        "with the following prefixes: [ admin- x:]"
    )


async def test_reserved_prefix_is_case_sensitive_and_replaceable() -> None:
    """Prefixes compare case-sensitively and a reload can replace them."""
    backend = Backend("MountedFile", _mounted(ADMIN_ROLE), reserved_prefixes=["ADMIN-"])
    chain = MapperChain([backend])
    assert (await chain.map(_role_identity())).user.username == "admin-alice"
    backend.set_reserved_prefixes(["admin"])
    with pytest.raises(ReservedPrefixError):
        await chain.map(_role_identity())


async def test_mapping_failure_denies_without_trying_later_backends() -> None:
    """A template failure in the matching backend denies even if a later backend would map."""
    node = (
        "server:\n  mapRoles:\n  - rolearn: arn:aws:iam::000000000000:role/Admin\n"
        "    username: n:{{EC2PrivateDNSName}}\n"
    )
    later = _mounted(ADMIN_ROLE)
    chain = MapperChain([Backend("MountedFile", _mounted(node)), Backend("CRD", later)])
    with pytest.raises(TemplateError) as caught:
        await chain.map(_role_identity())
    assert str(caught.value) == (
        "mapper MountedFile renderTemplates error: error rendering username template "
        '"n:{{EC2PrivateDNSName}}": SessionName did not contain an instance id'
    )


EC2_NODE = """
server:
  mapRoles:
  - rolearn: arn:aws:iam::000000000000:role/Node
    username: system:node:{{EC2PrivateDNSName}}
    groups: [system:nodes, "n-{{EC2PrivateDNSName}}"]
"""


async def test_ec2_private_dns_is_looked_up_once_per_review() -> None:
    """The resolver gets the instance ID once, and its answer fills username and groups."""
    calls: list[str] = []

    async def resolve(instance: str) -> str:
        calls.append(instance)
        return "ip-10-1-2-3.ec2.internal"

    chain = MapperChain([Backend("MountedFile", _mounted(EC2_NODE))])
    result = await chain.map(
        _role_identity("Node", "i-0123456789abcdef0"), resolve_private_dns=resolve
    )
    assert calls == ["i-0123456789abcdef0"]
    assert result.user.username == "system:node:ip-10-1-2-3.ec2.internal"
    assert result.user.groups == ("system:nodes", "n-ip-10-1-2-3.ec2.internal")


async def test_ec2_without_resolver_is_a_template_error() -> None:
    """With no EC2 resolver configured, the template fails saying so."""
    chain = MapperChain([Backend("MountedFile", _mounted(EC2_NODE))])
    with pytest.raises(TemplateError, match="EC2 lookups are not configured"):
        await chain.map(_role_identity("Node", "i-0123abcd"))


async def test_ec2_lookup_failure_is_a_template_error() -> None:
    """A resolver failure (an AuthdError) denies as a template error naming the instance."""

    async def resolve(instance: str) -> str:
        raise AuthdError("UnauthorizedOperation")

    chain = MapperChain([Backend("MountedFile", _mounted(EC2_NODE))])
    with pytest.raises(TemplateError) as caught:
        await chain.map(_role_identity("Node", "i-0123abcd"), resolve_private_dns=resolve)
    assert "failed querying private DNS from EC2 API for node i-0123abcd: " in str(caught.value)
    assert isinstance(caught.value.__cause__, AuthdError)


async def test_scrubbed_account_gets_administrative_uid_and_no_extra() -> None:
    """For a scrubbed account the uid names the username and extra is empty."""
    chain = MapperChain([Backend("MountedFile", _mounted(ADMIN_ROLE))], scrubbed_accounts=[ACCOUNT])
    user = (await chain.map(_role_identity())).user
    assert user.uid == "aws-iam-authenticator:administrative:admin-alice"
    assert user.extra == {}


async def test_uid_and_extra_for_ordinary_accounts() -> None:
    """Otherwise uid is account and user ID, and extra carries the six upstream keys."""
    identity = _role_identity()
    user = (await MapperChain([Backend("MountedFile", _mounted(ADMIN_ROLE))]).map(identity)).user
    assert user.uid == f"aws-iam-authenticator:{ACCOUNT}:{identity.user_id}"
    assert user.extra == {
        "accessKeyId": ["ASIAEXAMPLE"],
        "arn": [identity.arn],
        "canonicalArn": [identity.canonical_arn],
        "principalId": [identity.user_id],
        "sessionName": ["alice"],
        "sigs.k8s.io/aws-iam-authenticator/principalId": [identity.user_id],
    }


async def test_backend_without_table_reports_not_loaded() -> None:
    """A backend created without a table is not ready and says it has not loaded yet."""
    backend = Backend("DynamicFile")
    assert not backend.ready
    assert backend.problem == "not loaded yet"
    with pytest.raises(NotMappedError, match="not loaded yet"):
        await MapperChain([backend]).map(_role_identity())


# MountedFile table ------------------------------------------------------------------------


def test_mounted_last_duplicate_wins_case_insensitively() -> None:
    """Two entries for the same ARN in different case: the later one is used."""
    table = _mounted(
        "server:\n  mapRoles:\n"
        "  - {rolearn: 'arn:aws:iam::000000000000:role/Admin', username: first}\n"
        "  - {rolearn: 'arn:aws:iam::000000000000:role/ADMIN', username: second}\n"
        "  mapUsers:\n"
        "  - {userarn: 'arn:aws:iam::000000000000:user/Bob', username: first}\n"
        "  - {userarn: 'arn:aws:iam::000000000000:user/bob', username: second}\n"
    )
    role = table.lookup(_role_identity())
    assert role is not None and role.username == "second"
    bob = Identity(
        arn="arn:aws:iam::000000000000:user/BOB",
        canonical_arn="arn:aws:iam::000000000000:user/BOB",
        account_id=ACCOUNT,
        user_id="AIDABOB",
        session_name="",
        access_key_id="AKIA",
    )
    user = table.lookup(bob)
    assert user is not None and user.username == "second"


def test_mounted_roles_are_checked_before_users() -> None:
    """An ARN listed as both role and user resolves to the role entry."""
    table = _mounted(
        "server:\n"
        "  mapRoles: [{rolearn: 'arn:aws:iam::000000000000:role/Admin', username: as-role}]\n"
        "  mapUsers: [{userarn: 'arn:aws:iam::000000000000:role/Admin', username: as-user}]\n"
    )
    entry = table.lookup(_role_identity())
    assert entry is not None and entry.username == "as-role"


SSO = """
server:
  mapRoles:
  - sso: {permissionSetName: Admin_Access, accountID: "000000000000", partition: aws-cn}
    username: sso
"""


def test_sso_uses_the_given_partition() -> None:
    """An SSO entry with a partition matches roles in that partition only (upstream bug fixed)."""
    table = _mounted(SSO, sso=True)
    cn = Identity(
        arn="arn:aws-cn:sts::000000000000:assumed-role/AWSReservedSSO_Admin_Access_0f1e2d3c4b5a6978/jane",
        canonical_arn="arn:aws-cn:iam::000000000000:role/AWSReservedSSO_Admin_Access_0f1e2d3c4b5a6978",
        account_id=ACCOUNT,
        user_id="AROASSO:jane",
        session_name="jane",
        access_key_id="ASIA",
    )
    assert table.lookup(cn) is not None
    assert table.lookup(_role_identity("AWSReservedSSO_Admin_Access_0f1e2d3c4b5a6978")) is None
    assert _mounted(SSO, sso=False).lookup(cn) is None


def test_sso_requires_the_permission_set_separator() -> None:
    """The pattern is `AWSReservedSSO_<set>_*`: another set sharing a prefix does not match."""
    table = _mounted(SSO.replace(", partition: aws-cn", ""), sso=True)
    assert table.lookup(_role_identity("AWSReservedSSO_Admin_Access_0123456789abcdef")) is not None
    assert table.lookup(_role_identity("awsreservedsso_admin_access_0123456789ABCDEF")) is not None
    assert table.lookup(_role_identity("AWSReservedSSO_Admin_AccessX_0123456789abcdef")) is None
    assert table.lookup(_role_identity("AWSReservedSSO_Admin_Access")) is None


@pytest.mark.parametrize(
    "suffix",
    ["abc", "0123456789abcde", "0123456789abcdef0", "0123456789abcdeg", "0123456789abcdef/x", ""],
)
def test_sso_suffix_is_exactly_16_hex_digits(suffix: str) -> None:
    """Only `AWSReservedSSO_<set>_` plus 16 hex digits matches, as Identity Center names roles."""
    table = _mounted(SSO.replace(", partition: aws-cn", ""), sso=True)
    assert table.lookup(_role_identity(f"AWSReservedSSO_Admin_Access_{suffix}")) is None


def test_mounted_lookup_is_constant_time_on_a_large_table() -> None:
    """100,000 roles index once; a lookup stays a dictionary hit (well under 20 us each)."""
    roles = tuple(
        RoleMapping(rolearn=f"arn:aws:iam::000000000000:role/R{i}", username=f"u{i}")
        for i in range(100_000)
    )
    table = MountedFileTable.from_config(MappingConfig(map_roles=roles))
    identity = _role_identity("r99999")
    start = time.perf_counter()
    for _ in range(10_000):
        entry = table.lookup(identity)
    per_lookup = (time.perf_counter() - start) / 10_000
    assert entry is not None and entry.username == "u99999"
    assert per_lookup < 20e-6


def test_yaml_merge_keys_are_resolved() -> None:
    """A `<<: *anchor` merge key fills an entry from an anchored mapping."""
    table = _mounted(
        "defaults: &admin {username: admin, groups: [system:masters]}\n"
        "server:\n  mapRoles:\n"
        "  - <<: *admin\n    rolearn: arn:aws:iam::000000000000:role/Admin\n"
    )
    entry = table.lookup(_role_identity())
    assert entry is not None and (entry.username, entry.groups) == ("admin", ("system:masters",))


# DynamicFile parsing ----------------------------------------------------------------------


def test_dynamicfile_keys_are_case_insensitive_and_unknown_keys_ignored() -> None:
    """`MAPROLES`, `RoleArn`, `ClusterId`, `sso` and friends parse as upstream's Go decoder does."""
    table = _dynamic(
        {
            "ClusterId": "x",
            "version": "7",
            "lastUpdatedDateTime": "1700000000",
            "MAPROLES": [
                {
                    "RoleArn": "arn:aws:iam::000000000000:role/Admin",
                    "UserName": "a",
                    "Groups": ["g"],
                    "sso": {"permissionSetName": "x"},
                }
            ],
            "MapAccounts": ["111122223333"],
        }
    )
    entry = table.lookup(_role_identity())
    assert entry is not None and (entry.username, entry.groups) == ("a", ("g",))
    assert table.version == "7"
    assert table.last_updated == "1700000000"
    assert table.is_account_allowed("111122223333")
    assert not table.is_account_allowed(ACCOUNT)


def test_dynamicfile_nonstrict_canonicalizes_and_lowercases() -> None:
    """Non-strict entries are keyed by the canonical lower-cased ARN (assumed-role accepted)."""
    table = _dynamic(
        {
            "mapRoles": [
                {"rolearn": "arn:aws:sts::000000000000:assumed-role/ADMIN/s", "username": "a"}
            ]
        }
    )
    assert table.lookup(_role_identity()) is not None


def test_dynamicfile_nonstrict_bad_arn_never_matches() -> None:
    """An unparsable ARN in non-strict mode is kept out of the table with a warning."""
    table = _dynamic({"mapRoles": [{"rolearn": "not-an-arn", "username": "a"}]})
    assert table.roles == {}
    assert any("not-an-arn" in w for w in table.warnings)


@pytest.mark.parametrize(
    ("strict", "document", "message"),
    [
        (
            False,
            {"mapRoles": [{"userid": "AROA", "username": "a"}]},
            "mapRoles[0]: value for rolearn or userid(if dynamicfileUserIDStrict = true) "
            "must be supplied",
        ),
        (
            True,
            {"mapUsers": [{"userarn": "arn:aws:iam::000000000000:user/a", "username": "a"}]},
            "mapUsers[0]: value for userarn or userid(if dynamicfileUserIDStrict = true) "
            "must be supplied",
        ),
    ],
)
def test_dynamicfile_entry_without_key_rejects_whole_file(
    strict: bool, document: object, message: str
) -> None:
    """An entry missing its key rejects the whole file with upstream's text."""
    with pytest.raises(ConfigError) as caught:
        _dynamic(document, strict=strict)
    assert str(caught.value) == f"dyn.json: error parsing dynamic file: {message}"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"{not json", "could not unmarshal dynamic file"),
        (b"[]", "expected an object"),
        (b'{"mapRoles": {}}', "mapRoles: expected a list"),
        (b'{"mapRoles": [{"rolearn": 5}]}', "rolearn: expected a string"),
        (b'{"mapUsers": [{"userarn": "a", "groups": "g"}]}', "groups: expected a list"),
        (b'{"mapAccounts": [123]}', "mapAccounts: expected a list of strings"),
        (b"[" * 100_000 + b"]" * 100_000, "exceeded maximum nesting depth"),
    ],
)
def test_dynamicfile_bad_documents_are_rejected(data: bytes, fragment: str) -> None:
    """Malformed JSON or wrong types reject the file, naming the file and the key."""
    with pytest.raises(ConfigError) as caught:
        DynamicFileTable.from_bytes(data, path="dyn.json", userid_strict=False)
    assert str(caught.value).startswith("dyn.json: ")
    assert fragment in str(caught.value)


def test_dynamicfile_strict_is_case_sensitive_on_user_id() -> None:
    """Strict lookup uses the STS user ID exactly."""
    table = _dynamic({"mapUsers": [{"userid": "AIDAX", "username": "x"}]}, strict=True)
    ident = Identity(
        arn="arn:aws:iam::000000000000:user/x",
        canonical_arn="arn:aws:iam::000000000000:user/x",
        account_id=ACCOUNT,
        user_id="aidax",
        session_name="",
        access_key_id="AKIA",
    )
    assert table.lookup(ident) is None


def test_dynamicfile_strict_unparsable_arn_fails_closed() -> None:
    """A strict entry with an unparsable ARN refuses the caller rather than skip the check."""
    table = _dynamic(
        {"mapRoles": [{"rolearn": "garbage", "userid": "AROAADMIN:alice", "username": "a"}]},
        strict=True,
    )
    with pytest.raises(MappingError, match="ARN does not match User ID"):
        table.lookup(_role_identity())


DYNAMIC_TEXT = (
    "{\n"
    '  "mapRoles": [\n'
    '    {"rolearn": "arn:aws:iam::000000000000:role/A", "username": "a"},\n'
    "    {\n"
    '      "RoleArn": "arn:aws:iam::bad",\n'
    '      "username": "b",\n'
    '      "groups": ["g"]\n'
    "    }\n"
    "  ],\n"
    '  "mapAccounts": ["000000000000"]\n'
    "}\n"
)


@pytest.mark.parametrize(
    ("data", "refuse", "line", "key"),
    [
        (DYNAMIC_TEXT.replace('"username": "a"}', '"username": }'), False, 3, None),
        (DYNAMIC_TEXT.replace('["g"]', "[7]"), False, 7, "mapRoles[1].groups"),
        (DYNAMIC_TEXT, True, 5, "mapRoles[1].rolearn"),
        (DYNAMIC_TEXT.replace('"RoleArn": "arn:aws:iam::bad",', ""), False, 4, "mapRoles[1]"),
    ],
    ids=["syntax", "wrong-type", "bad-arn", "missing-key"],
)
def test_dynamicfile_errors_carry_path_line_and_key(
    data: str, refuse: bool, line: int, key: str | None
) -> None:
    """The DynamicFile parser itself says where a refused version is wrong: file, line, key."""
    with pytest.raises(ConfigError) as caught:
        DynamicFileTable.from_bytes(
            data.encode(), path="dyn.json", userid_strict=False, refuse_bad_arns=refuse
        )
    error = caught.value
    assert (error.path, error.line, error.key) == ("dyn.json", line, key)
    assert str(error).startswith("dyn.json: ")


def test_dynamicfile_bad_arn_without_refusal_only_warns() -> None:
    """By default a bad ARN leaves its entry out with a warning, as upstream never finds it."""
    table = DynamicFileTable.from_bytes(DYNAMIC_TEXT.encode(), path="d.json", userid_strict=False)
    assert len(table) == 2  # one role, one account
    assert len(table.warnings) == 1
    assert table.warnings[0].startswith("d.json: mapRoles[1].rolearn: ")
    assert table.warnings[0].endswith("; entry never matches")


def test_tables_count_their_mappings() -> None:
    """len() of a table is its roles, SSO patterns, users and allowed accounts."""
    file = FileConfig.from_text(
        "server:\n"
        "  mapRoles:\n"
        "  - {rolearn: 'arn:aws:iam::000000000000:role/A', username: a}\n"
        "  - sso: {permissionSetName: Admin, accountID: '000000000000'}\n"
        "    username: s\n"
        "  mapUsers:\n"
        "  - {userarn: 'arn:aws:iam::000000000000:user/u', username: u}\n"
        "  mapAccounts: ['111122223333', '222233334444']\n",
        path="c.yaml",
    )
    mapping = MappingConfig.from_file_config(file)
    assert len(MountedFileTable.from_config(mapping, sso_role_match=True)) == 5
    assert len(MountedFileTable.from_config(mapping, sso_role_match=False)) == 4
    assert len(MountedFileTable.from_config(MappingConfig())) == 0
    dynamic = _dynamic(
        {
            "mapRoles": [{"rolearn": "arn:aws:iam::000000000000:role/A", "username": "a"}],
            "mapUsers": [
                {"userarn": "arn:aws:iam::000000000000:user/u", "username": "u"},
                {"userarn": "arn:aws:iam::000000000000:user/v", "username": "v"},
            ],
            "mapAccounts": ["111122223333"],
        }
    )
    assert len(dynamic) == 4
