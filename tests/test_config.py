"""Config file parsing, server settings precedence and start-up validation.

See server 1-2, 6 in docs/upstream-compat.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from authd.config import (
    FeatureGates,
    FileConfig,
    MappingConfig,
    ServerSettings,
    parse_duration,
)
from authd.errors import ConfigError
from authd.identity import Identity
from authd.mapping.chain import Backend, MapperChain
from authd.mapping.file import MountedFileTable

REPO = Path(__file__).resolve().parent.parent


def _file(text: str, path: str = "config.yaml") -> FileConfig:
    """Parse config text under a file name."""
    return FileConfig.from_text(text, path=path)


def _settings(
    text: str | None = "clusterID: c\n",
    *,
    flags: dict[str, object] | None = None,
    env: dict[str, str] | None = None,
) -> ServerSettings:
    """Resolve settings from config text (None = no file), flags and env."""
    file = None if text is None else _file(text)
    return ServerSettings.resolve(flags=flags or {}, env=env or {}, file=file)


def _error(text: str | None, **kwargs: object) -> str:
    """The ConfigError text `_settings` raises."""
    with pytest.raises(ConfigError) as caught:
        _settings(text, **kwargs)  # type: ignore[arg-type]
    return str(caught.value)


# File loading -----------------------------------------------------------------------------


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    """A missing file fails with upstream's `Can't read configuration file` text."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        FileConfig.from_file(missing)
    assert (
        str(caught.value)
        == f'Can\'t read configuration file "{missing}": No such file or directory'
    )


def test_directory_and_binary_files_are_rejected(tmp_path: Path) -> None:
    """A directory or a non-UTF-8 file is refused with the file named."""
    with pytest.raises(ConfigError, match="Can't read configuration file"):
        FileConfig.from_file(tmp_path)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"clusterID: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bin\.yaml.*not UTF-8"):
        FileConfig.from_file(binary)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    """A YAML syntax error reports the file and the line of the problem."""
    path = tmp_path / "config.yaml"
    path.write_text("clusterID: c\nserver:\n  mapRoles:\n  - rolearn: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        FileConfig.from_file(path)
    # The unclosed `[` is on line 4; the parser only notices at the end of the text (line 5).
    assert str(caught.value) == (
        f"Can't read configuration file \"{path}\": {path}:4: did not find expected ',' or ']'"
    )
    assert (caught.value.path, caught.value.line, caught.value.key) == (str(path), 4, None)


def test_syntax_error_inside_the_text_names_its_own_line() -> None:
    """A problem found before the end of the text is blamed on the line where it is found."""
    with pytest.raises(ConfigError) as caught:
        _file("clusterID: c\nserver:\n  port: 1\n   bad: 2\nx: y\n")
    assert str(caught.value).startswith("config.yaml:4: ")
    assert (caught.value.path, caught.value.line, caught.value.key) == ("config.yaml", 4, None)


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("clusterID: c\nserver:\n  port: [1]\n", 3, "server.port"),
        (
            "clusterID: c\nserver:\n  mapUsers:\n  - userarn: nope\n",
            4,
            "server.mapUsers[0].userarn",
        ),
        (
            "clusterID: c\nserver:\n  mapRoles:\n  - rolearn: arn:aws:iam::1:role/R\n"
            "  - username: u\n",
            5,
            "server.mapRoles[1]",
        ),
    ],
    ids=["wrong-type", "bad-arn", "missing-key"],
)
def test_config_errors_carry_path_line_and_key(text: str, line: int, key: str) -> None:
    """A wrong type or a bad ARN in YAML gives the file, line and key as attributes."""
    with pytest.raises(ConfigError) as caught:
        ServerSettings.resolve(flags={}, env={}, file=_file(text))
    error = caught.value
    assert (error.path, error.line, error.key) == ("config.yaml", line, key)
    assert f"config.yaml:{line}: {key}: " in str(error)


def test_json_config_errors_carry_path_and_line() -> None:
    """A JSON syntax error carries the file and line; a flag error carries no file location."""
    with pytest.raises(ConfigError) as caught:
        _file('{\n  "clusterID": "c",\n}\n', path="c.json")
    assert (caught.value.path, caught.value.line, caught.value.key) == ("c.json", 3, None)
    with pytest.raises(ConfigError) as caught:
        _settings(flags={"port": "http"})
    assert (caught.value.path, caught.value.line, caught.value.key) == (None, None, None)
    assert str(caught.value).startswith("--port: ")


def test_json_config_syntax_error_and_lines(tmp_path: Path) -> None:
    """A .json file is read as JSON (trailing comma refused) and errors still carry lines."""
    with pytest.raises(ConfigError, match=r"^c\.json:3: "):
        _file('{\n  "clusterID": "c",\n}\n', path="c.json")
    text = (
        '{\n\t"clusterID": "c",\n\t"server": {\n\t\t"mapRoles": [\n'
        '\t\t\t{"rolearn": "bad"}\n\t\t]\n\t}\n}\n'
    )
    message = _error_file(text, "c.json")
    assert message == (
        "invalid server role mappings: c.json:5: server.mapRoles[0].rolearn: "
        "arn 'bad' is invalid: 'arn: invalid prefix'"
    )


@pytest.mark.parametrize("path", ["c.json", "c.yaml"])
def test_absurd_nesting_is_a_config_error(path: str) -> None:
    """Deeply nested JSON or YAML is refused with the file's name, not a RecursionError."""
    text = '{"clusterID": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(ConfigError, match=rf"^{path}(:\d+)?: exceeded maximum nesting depth"):
        _file(text, path=path)


def _error_file(text: str, path: str) -> str:
    """The ConfigError text of resolving settings from config text under a name."""
    with pytest.raises(ConfigError) as caught:
        ServerSettings.resolve(flags={}, env={}, file=_file(text, path))
    return str(caught.value)


def test_top_level_must_be_a_mapping() -> None:
    """A list at the top level is refused with its line."""
    with pytest.raises(ConfigError, match=r"^config\.yaml:1: the config file must be a mapping"):
        _file("- a\n- b\n")


def test_empty_file_is_an_empty_config() -> None:
    """An empty file parses; settings then fail only on the missing cluster ID."""
    assert _file("").server == {}
    assert _error("") == "cluster ID cannot be empty"


def test_keys_are_case_insensitive_and_unknown_keys_warn() -> None:
    """`CLUSTERID`, `Server`, `MapRoles`, `RoleArn` all work; unknown keys become warnings."""
    text = (
        "CLUSTERID: c\n"
        "Server:\n"
        "  PORT: 1234\n"
        "  colour: blue\n"
        "  MapRoles:\n"
        "  - RoleArn: arn:aws:iam::000000000000:role/Admin\n"
        "    UserName: admin\n"
        "    extra: 1\n"
    )
    settings = _settings(text)
    assert settings.cluster_ids == ("c",)
    assert settings.port == 1234
    assert settings.mapping.map_roles[0].username == "admin"
    assert "config.yaml:4: Server.colour: unknown key, ignored" in settings.warnings
    assert "config.yaml:8: Server.MapRoles[0].extra: unknown key, ignored" in settings.warnings


def test_duplicate_keys_warn_and_last_wins() -> None:
    """Keys differing only in case are duplicates: a warning, and the last value is used."""
    file = _file("clusterID: a\nclusterid: b\n")
    assert any("config.yaml:2: clusterid: duplicate key" in w for w in file.warnings)
    assert ServerSettings.resolve(flags={}, env={}, file=file).cluster_ids == ("b",)


# Mapping entries --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            "  - username: x\n",
            "invalid server role mappings: config.yaml:4: server.mapRoles[0]: "
            "one of rolearn or SSO must be supplied",
        ),
        (
            "  - rolearn: arn:aws:iam::000000000000:role/A\n"
            "    sso: {permissionSetName: P, accountID: '000000000000'}\n",
            "invalid server role mappings: config.yaml:4: server.mapRoles[0]: "
            "only one of rolearn or SSO can be supplied",
        ),
        (
            "  - sso:\n      permissionSetName: P\n      accountID: 12345\n",
            "invalid server role mappings: config.yaml:6: server.mapRoles[0].sso.accountID: "
            "AccountID '12345' is not a valid AWS Account ID",
        ),
        (
            "  - sso:\n      permissionSetName: 'has space'\n      accountID: '000000000000'\n",
            "invalid server role mappings: config.yaml:5: "
            "server.mapRoles[0].sso.permissionSetName: "
            "PermissionSetName 'has space' is not a valid AWS SSO PermissionSet Name",
        ),
        (
            "  - sso: {permissionSetName: P, accountID: '000000000000', partition: aws-mars}\n",
            "invalid server role mappings: config.yaml:4: server.mapRoles[0].sso.partition: "
            "partition 'aws-mars' is not a valid AWS partition",
        ),
        (
            "  - sso: {}\n",
            "invalid server role mappings: config.yaml:4: server.mapRoles[0].sso: "
            "AccountID '' is not a valid AWS Account ID",
        ),
        (
            "  - rolearn: arn:aws:s3:::bucket\n",
            "invalid server role mappings: config.yaml:4: server.mapRoles[0].rolearn: "
            "service s3 in arn arn:aws:s3:::bucket is not a valid service for identities",
        ),
        (
            "  - rolearn: arn:aws:iam::0:role/A\n    groups: {a: b}\n",
            "invalid server role mappings: config.yaml:5: server.mapRoles[0].groups: "
            "expected a list, got a mapping",
        ),
    ],
)
def test_role_entry_errors_name_file_line_and_key(entry: str, expected: str) -> None:
    """Each invalid role entry fails start-up with upstream's text at its file, line and key."""
    assert _error("clusterID: c\nserver:\n  mapRoles:\n" + entry) == expected


def test_role_error_points_at_the_bad_entry_among_many() -> None:
    """The index and line of the failing entry are named, not the list's."""
    text = "clusterID: c\nserver:\n  mapRoles:\n" + "".join(
        f"  - rolearn: arn:aws:iam::000000000000:role/R{i}\n    username: u{i}\n" for i in range(3)
    )
    text += "  - rolearn: x\n    username: bad\n"
    assert _error(text) == (
        "invalid server role mappings: config.yaml:10: server.mapRoles[3].rolearn: "
        "arn 'x' is invalid: 'arn: invalid prefix'"
    )


@pytest.mark.parametrize(
    ("users", "expected"),
    [
        (
            "  - username: x\n",
            "invalid server user mappings: config.yaml:4: server.mapUsers[0]: "
            "value for userarn must be supplied",
        ),
        (
            "  - userarn: arn:aws:iam::000000000000:group/G\n",
            "invalid server user mappings: config.yaml:4: server.mapUsers[0].userarn: "
            "error canonicalizing ARN: unrecognized resource group/g for service iam",
        ),
    ],
)
def test_user_entry_errors(users: str, expected: str) -> None:
    """Invalid user entries fail with upstream's texts at their location."""
    assert _error("clusterID: c\nserver:\n  mapUsers:\n" + users) == expected


def test_account_and_reserved_prefix_errors() -> None:
    """Wrongly shaped mapAccounts and reservedPrefixConfig fail with their section's text."""
    assert _error("clusterID: c\nserver:\n  mapAccounts: {a: 1}\n") == (
        "invalid server account mappings: config.yaml:3: server.mapAccounts: "
        "expected a list, got a mapping"
    )
    assert _error(
        "clusterID: c\nserver:\n  reservedPrefixConfig:\n"
        "  - backendmode: File\n    usernamePrefixReserveList: ['system:']\n"
    ) == (
        "invalid reserved prefix config: config.yaml:4: server.reservedPrefixConfig[0]."
        'backendmode: backendmode "File" is not a valid mode (use "MountedFile")'
    )


def test_mapping_values_are_canonical() -> None:
    """Role ARNs are canonicalised, user ARNs canonicalised and lower-cased, IDs kept literal."""
    mapping = MappingConfig.from_file_config(
        _file(
            "server:\n"
            "  mapRoles:\n"
            "  - rolearn: arn:aws:sts::000000000000:assumed-role/Admin/sess\n"
            "    username: a\n    groups: system:masters\n"
            "  mapUsers:\n"
            "  - userARN: arn:aws:iam::000000000000:user/Alice\n    username: alice\n"
            "  mapAccounts: ['000000000000']\n"
            "  reservedPrefixConfig:\n"
            "  - backendMode: DynamicFile\n    usernamePrefixReserveList: ['eks:']\n"
        )
    )
    assert mapping.map_roles[0].rolearn == "arn:aws:iam::000000000000:role/Admin"
    assert mapping.map_roles[0].groups == ("system:masters",)
    assert mapping.map_users[0].userarn == "arn:aws:iam::000000000000:user/alice"
    assert mapping.map_accounts == ("000000000000",)
    assert mapping.reserved_prefixes_for("DynamicFile") == ("eks:",)
    assert mapping.reserved_prefixes_for("MountedFile") == ()


def test_unquoted_account_ids_become_decimal_text_with_a_warning() -> None:
    """An unquoted account ID is read as a base-10 number, losing leading zeros, and warned."""
    mapping = MappingConfig.from_file_config(
        _file("server:\n  mapAccounts:\n  - 000000000001\n  - 123456789012\n  - 0123\n")
    )
    assert mapping.map_accounts == ("1", "123456789012", "123")
    assert any(
        w.startswith('config.yaml:3: server.mapAccounts[0]: account ID "1" is not 12 digits')
        and "quote account IDs" in w
        for w in mapping.warnings
    )
    assert not any("mapAccounts[1]" in w for w in mapping.warnings)


def test_role_with_path_warns() -> None:
    """A role ARN with a path loads but warns that it can never match."""
    mapping = MappingConfig.from_file_config(
        _file("server:\n  mapRoles:\n  - {rolearn: 'arn:aws:iam::0:role/p/A', username: a}\n")
    )
    assert any("role ARN has a path" in w for w in mapping.warnings)


# Precedence -------------------------------------------------------------------------------


def test_defaults_without_file_or_flags() -> None:
    """With only a cluster ID, every setting has upstream's (or authd's) default."""
    s = _settings(None, flags={"cluster_ids": ["c"]})
    assert (s.partition, s.address, s.port, s.hostname) == ("aws", "127.0.0.1", 21362, "localhost")
    assert s.generate_kubeconfig == "/etc/kubernetes/aws-iam-authenticator/kubeconfig.yaml"
    assert s.state_dir == "/var/aws-iam-authenticator"
    assert s.backend_mode == ("MountedFile",)
    assert (s.ec2_describe_instances_qps, s.ec2_describe_instances_burst) == (15, 5)
    assert (s.sts_timeout, s.sts_qps, s.sts_burst) == (10.0, 50.0, 100)
    assert (s.identity_cache_size, s.ec2_cache_ttl, s.ec2_batch_window) == (100000, 900.0, 0.01)
    assert (s.identity_cache_bytes, s.extra_sts_regions) == (16 * 1024 * 1024, ())
    assert (s.health_address, s.log_verbosity, s.log_format) == ("", "info", "json")
    assert (s.client_ca_file, s.max_connections_per_client) == ("", 500)
    assert s.feature_gates == FeatureGates()
    assert s.mapping == MappingConfig()
    assert not s.kubeconfig_pregenerated and not s.dynamicfile_userid_strict


def test_flag_beats_env_beats_file() -> None:
    """Cluster ID: an explicit flag wins over the env var, which wins over the file."""
    text = "clusterID: from-file\n"
    env = {"KUBERNETES_AWS_AUTHENTICATOR_CLUSTER_ID": "from-env"}
    assert _settings(text).cluster_id == "from-file"
    assert _settings(text, env=env).cluster_id == "from-env"
    assert _settings(text, env=env, flags={"cluster_ids": ["from-flag"]}).cluster_id == "from-flag"
    # An empty environment variable counts as unset, as with viper.
    assert _settings(text, env={"KUBERNETES_AWS_AUTHENTICATOR_CLUSTER_ID": ""}).cluster_id == (
        "from-file"
    )


def test_file_beats_default_and_flag_beats_file() -> None:
    """Server keys come from the file unless the flag is given."""
    text = "clusterID: c\nserver:\n  port: 9000\n  stateDir: /srv/state\n  stsTimeout: 1m\n"
    s = _settings(text)
    assert (s.port, s.state_dir, s.sts_timeout) == (9000, "/srv/state", 60.0)
    s = _settings(text, flags={"port": "9443", "sts_timeout": "250ms"})
    assert (s.port, s.state_dir, s.sts_timeout) == (9443, "/srv/state", 0.25)


def test_log_verbosity_env_and_validation() -> None:
    """log-verbosity comes from its env var over the file; invalid levels use upstream's text."""
    text = "clusterID: c\nlog-verbosity: debug\n"
    assert _settings(text).log_verbosity == "debug"
    env = {"AWS_IAM_AUTHENTICATOR_LOG_VERBOSITY": "warn"}
    assert _settings(text, env=env).log_verbosity == "warning"
    assert _error(text, flags={"log_verbosity": "loud"}) == (
        'Invalid log level "loud". Valid values are: '
        "panic, fatal, error, warning, info, debug, trace"
    )


def test_unknown_log_format_warns_and_uses_text() -> None:
    """An unknown log format falls back to text with upstream's warning."""
    s = _settings(flags={"log_format": "xml"})
    assert s.log_format == "text"
    assert "Unknown log format specified (xml), will use default text formatter instead." in (
        s.warnings
    )


def test_cluster_id_string_or_list() -> None:
    """clusterID takes a list (current first, duplicates dropped) or a string."""
    assert _settings("clusterID: [new, old, new]\n").cluster_ids == ("new", "old")
    assert _settings(flags={"cluster_ids": ["a", "b"]}).cluster_id == "a"
    assert _error("clusterID: ['a', '']\n") == "cluster ID cannot be empty"
    assert _error(None) == "cluster ID cannot be empty"


def test_unknown_flag_key_is_refused() -> None:
    """A misspelt flags key is a programming error reported clearly, not ignored."""
    assert "unknown server setting(s): prot" in _error("clusterID: c\n", flags={"prot": 1})


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        ({"port": "http"}, '--port: expected an integer, got "http"'),
        ({"port": 70000}, "--port: port 70000 is out of range 0-65535"),
        ({"sts_timeout": "10"}, "--sts-timeout: invalid duration"),
        ({"sts_timeout": "0s"}, "--sts-timeout: must be greater than zero"),
        ({"identity_cache_size": -1}, "--identity-cache-size: must not be negative"),
        ({"identity_cache_bytes": -1}, "--identity-cache-bytes: must not be negative"),
        ({"kubeconfig_pregenerated": "yes"}, "--kubeconfig-pregenerated: expected true or false"),
        ({"health_address": "nowhere"}, '--health-address: "nowhere" is not a host:port'),
        (
            {"max_connections_per_client": 0},
            "--max-connections-per-client: must be greater than zero",
        ),
    ],
)
def test_bad_flag_values_name_the_flag(flags: dict[str, object], fragment: str) -> None:
    """A flag value of the wrong type or range fails naming the flag."""
    assert fragment in _error("clusterID: c\n", flags=flags)


def test_bad_file_values_name_file_line_and_key() -> None:
    """A config value of the wrong type names the file, line and key."""
    assert _error("clusterID: c\nserver:\n  port: [1]\n") == (
        "config.yaml:3: server.port: expected an integer, got a list"
    )
    assert _error("clusterID: c\nserver:\n  ec2CacheTTL: 15\n") == (
        'config.yaml:3: server.ec2CacheTTL: expected a duration such as 10s, got "15"'
    )


def test_go_bool_strings_are_accepted() -> None:
    """Booleans accept Go's ParseBool spellings from flags and the file."""
    assert _settings(flags={"kubeconfig_pregenerated": "T"}).kubeconfig_pregenerated
    assert _settings(
        "clusterID: c\nserver:\n  kubeconfigPregenerated: 'true'\n"
    ).kubeconfig_pregenerated
    assert not _settings(
        "clusterID: c\nserver:\n  kubeconfigPregenerated: 0\n"
    ).kubeconfig_pregenerated


# Durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("15m", 900.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("2h45m30.5s", 9930.5),
        ("100us", 1e-4),
        ("100\u00b5s", 1e-4),
        ("10ns", 1e-8),
        ("0", 0.0),
        (".5s", 0.5),
        ("-1s", -1.0),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    """Go-style duration strings parse to seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "s", "1d", "1h 30m", "1.s5", "ten seconds", "."])
def test_bad_durations(text: str) -> None:
    """Anything else is refused with an example of the right form."""
    with pytest.raises(ConfigError, match=r"invalid duration.*e\.g\. 500ms"):
        parse_duration(text)


# Feature gates ----------------------------------------------------------------------------


def test_feature_gates_parse() -> None:
    """`k=v,...` sets gates; AllAlpha turns all on unless a gate is set explicitly."""
    assert FeatureGates.parse("SSORoleMatch=true").sso_role_match
    gates = FeatureGates.parse("AllAlpha=true, SSORoleMatch=false")
    assert gates.configured_init_directories and gates.iam_identity_mapping_crd
    assert not gates.sso_role_match
    assert FeatureGates.parse("AllBeta=true") == FeatureGates()
    assert FeatureGates.parse("") == FeatureGates()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Bogus=true", "unrecognized feature gate: Bogus"),
        ("SSORoleMatch", "missing bool value for SSORoleMatch"),
        (
            "SSORoleMatch=maybe",
            'invalid value of SSORoleMatch=maybe, err: strconv.ParseBool: parsing "maybe": '
            "invalid syntax",
        ),
    ],
)
def test_bad_feature_gates(text: str, message: str) -> None:
    """Unknown gates and bad values are errors, named as Kubernetes' featuregate names them."""
    with pytest.raises(ConfigError) as caught:
        FeatureGates.parse(text)
    assert str(caught.value) == message
    assert _error("clusterID: c\n", flags={"feature_gates": text}) == f"--feature-gates: {message}"


def test_feature_gates_from_flag_only() -> None:
    """The flag sets gates; the config key is recognised but, as upstream, not applied."""
    s = _settings("clusterID: c\nfeature-gates: SSORoleMatch=true\n")
    assert not s.feature_gates.sso_role_match
    assert any("feature gates in the config file are not applied" in w for w in s.warnings)
    assert _settings(
        flags={"cluster_ids": ["c"], "feature_gates": "SSORoleMatch=true"}
    ).feature_gates.sso_role_match


# Start-up validation ----------------------------------------------------------------------


def test_invalid_partition() -> None:
    """A partition outside upstream's list is refused."""
    assert _error("clusterID: c\nserver:\n  partition: aws-mars\n").startswith(
        'invalid partition "aws-mars"'
    )
    assert _settings(flags={"cluster_ids": ["c"], "partition": "aws-cn"}).partition == "aws-cn"


def test_dynamicfile_mode_and_path_go_together() -> None:
    """DynamicFile in the backend list needs dynamicfilepath, and the path needs the mode."""
    assert _error("clusterID: c\n", flags={"backend_mode": ["MountedFile,DynamicFile"]}) == (
        "dynamicfile is set in backend-mode but dynamicfilepath is not set"
    )
    assert _error("clusterID: c\nserver:\n  dynamicfilepath: /m.json\n") == (
        "dynamicfile is not set in backend-mode but dynamicfilepath is set"
    )
    s = _settings(
        "clusterID: c\nserver:\n  backendMode: [DynamicFile]\n  dynamicfilepath: /m.json\n",
        flags={"dynamicfile_userid_strict": True},
    )
    assert (s.backend_mode, s.dynamicfile_path, s.dynamicfile_userid_strict) == (
        ("DynamicFile",),
        "/m.json",
        True,
    )


@pytest.mark.parametrize(
    ("modes", "message"),
    [
        (["Bogus"], 'backend-mode "Bogus" is not a valid mode'),
        (
            ["MountedFile", "MountedFile"],
            'backend-mode ["MountedFile" "MountedFile"] has duplicates',
        ),
        ([""], "at least one backend-mode must be specified"),
        (
            ["Bogus,CRD,CRD"],
            '[backend-mode "Bogus" is not a valid mode, backend-mode ["Bogus" "CRD" "CRD"] '
            "has duplicates]",
        ),
    ],
)
def test_backend_mode_validation(modes: list[str], message: str) -> None:
    """The backend list is validated with upstream's texts, aggregated."""
    assert _error("clusterID: c\n", flags={"backend_mode": modes}) == message


def test_deprecated_backend_modes_warn_and_resolve() -> None:
    """File and ConfigMap are accepted with upstream's warning and reported by their new names."""
    s = _settings(flags={"cluster_ids": ["c"], "backend_mode": ["File", "ConfigMap,CRD"]})
    assert s.backend_mode == ("MountedFile", "EKSConfigMap", "CRD")
    assert 'warning: backend-mode "File" is deprecated, use "MountedFile" instead' in s.warnings
    assert (
        'warning: backend-mode "ConfigMap" is deprecated, use "EKSConfigMap" instead' in s.warnings
    )
    both = _settings(flags={"cluster_ids": ["c"], "backend_mode": ["File,MountedFile"]})
    assert both.backend_mode == ("MountedFile",)


def test_backend_mode_from_file_list_or_string() -> None:
    """server.backendMode is a YAML list or a space-separated string."""
    assert _settings("clusterID: c\nserver:\n  backendMode: MountedFile CRD\n").backend_mode == (
        "MountedFile",
        "CRD",
    )
    assert _settings("clusterID: c\nserver:\n  backendMode: [CRD]\n").backend_mode == ("CRD",)


def test_validation_order_follows_upstream() -> None:
    """Role mappings are checked before the cluster ID, which is checked before the partition."""
    assert _error("server:\n  partition: x\n  mapRoles:\n  - username: a\n").startswith(
        "invalid server role mappings: "
    )
    assert _error("server:\n  partition: x\n") == "cluster ID cannot be empty"
    assert _error("clusterID: c\nserver:\n  partition: x\n  backendMode: [Bogus]\n").startswith(
        "invalid partition"
    )


def test_ec2_role_arn_must_be_an_arn() -> None:
    """An invalid ec2DescribeInstancesRoleARN aborts with upstream's text."""
    assert _error("clusterID: c\nserver:\n  ec2DescribeInstancesRoleARN: nope\n") == (
        "describeinstancesrole nope is not a valid arn"
    )


def test_extra_sts_endpoints() -> None:
    """Extra STS origins are normalised; http only for loopback; paths refused."""
    s = _settings(
        flags={
            "cluster_ids": ["c"],
            "extra_sts_endpoints": [
                "https://STS.example.com",
                "http://127.0.0.1:5000/",
                "http://[::1]:1",
            ],
        }
    )
    assert s.extra_sts_endpoints == (
        "https://sts.example.com",
        "http://127.0.0.1:5000",
        "http://[::1]:1",
    )
    assert "http is only allowed for loopback hosts" in _error(
        "clusterID: c\n", flags={"extra_sts_endpoints": ["http://sts.example.com"]}
    )
    assert _error("clusterID: c\nserver:\n  extraSTSEndpoints:\n  - https://h/path\n") == (
        'config.yaml:4: server.extraSTSEndpoints[0]: "https://h/path" is not a valid STS '
        "endpoint: expected scheme://host[:port]"
    )


def test_extra_sts_regions() -> None:
    """Extra STS regions come from the flag or the config key; a bad name fails with its key."""
    s = _settings(flags={"cluster_ids": ["c"], "extra_sts_regions": ["us-moon-1", "us-moon-1"]})
    assert s.extra_sts_regions == ("us-moon-1",)
    s = _settings("clusterID: c\nserver:\n  extraSTSRegions: [eu-moon-2]\n")
    assert s.extra_sts_regions == ("eu-moon-2",)
    assert _error("clusterID: c\nserver:\n  extraSTSRegions:\n  - us.moon\n") == (
        'config.yaml:4: server.extraSTSRegions[0]: "us.moon" is not a valid region name'
    )


def test_scrubbed_accounts_from_file() -> None:
    """server.scrubbedAccounts is read as account ID strings."""
    s = _settings("clusterID: c\nserver:\n  scrubbedAccounts: ['000000000000', 111122223333]\n")
    assert s.scrubbed_accounts == ("000000000000", "111122223333")


# Sample files -----------------------------------------------------------------------------


def test_example_config_loads() -> None:
    """config/example.yaml parses with no warnings and maps its admin role."""
    file = FileConfig.from_file(REPO / "config" / "example.yaml")
    s = ServerSettings.resolve(flags={}, env={}, file=file)
    assert s.warnings == ()
    assert s.cluster_id == "my-dev-cluster.example.com"
    assert len(s.mapping.map_roles) == 3
    assert s.mapping.map_accounts == ("000000000000",)
    assert s.mapping.reserved_prefixes_for("MountedFile") == ("system:", "eks:")


async def test_demo_config_maps_the_demo_identities() -> None:
    """config/demo.yaml maps moto's demo-admin role and demo-dev user as `make demo` expects."""
    file = FileConfig.from_file(REPO / "config" / "demo.yaml")
    s = ServerSettings.resolve(flags={}, env={}, file=file)
    assert s.cluster_id == "authd-demo"
    assert s.warnings == ()
    chain = MapperChain([Backend("MountedFile", MountedFileTable.from_config(s.mapping))])
    admin = Identity(
        arn="arn:aws:sts::123456789012:assumed-role/demo-admin/me@example.com",
        canonical_arn="arn:aws:iam::123456789012:role/demo-admin",
        account_id="123456789012",
        user_id="AROADEMO:me@example.com",
        session_name="me@example.com",
        access_key_id="ASIADEMO",
    )
    user = (await chain.map(admin)).user
    assert (user.username, user.groups) == ("admin:me-example.com", ("system:masters",))
    dev = Identity(
        arn="arn:aws:iam::123456789012:user/demo-dev",
        canonical_arn="arn:aws:iam::123456789012:user/demo-dev",
        account_id="123456789012",
        user_id="AIDADEMODEV",
        session_name="",
        access_key_id="AKIADEMO",
    )
    user = (await chain.map(dev)).user
    assert (user.username, user.groups) == ("dev", ("developers",))


def test_client_ca_and_per_client_cap_come_from_flags_or_the_file() -> None:
    """`--client-ca-file` and `--max-connections-per-client` have config keys
    `server.clientCAFile` and `server.maxConnectionsPerClient`; a flag wins over the file."""
    text = "clusterID: c\nserver:\n  clientCAFile: /etc/ca.pem\n  maxConnectionsPerClient: 20\n"
    from_file = _settings(text)
    assert (from_file.client_ca_file, from_file.max_connections_per_client) == ("/etc/ca.pem", 20)
    flagged = _settings(
        text, flags={"client_ca_file": "/run/ca.pem", "max_connections_per_client": "8"}
    )
    assert (flagged.client_ca_file, flagged.max_connections_per_client) == ("/run/ca.pem", 8)
