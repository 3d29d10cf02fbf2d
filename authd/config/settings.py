"""Server settings: every `server`/`init` setting from flags, environment and the config file.

`ServerSettings.resolve` applies upstream's precedence (flag > env > config file > default)
and validates start-up in upstream's order (docs/server.md). One table, `_SETTINGS`, says for
each attribute its flag, config key, environment variable, converter and default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from authd.arn import PARTITIONS, canonicalize
from authd.config.file import FileConfig
from authd.config.gates import FeatureGates
from authd.config.located import (
    Located,
    as_account,
    as_bool,
    as_cluster_ids,
    as_duration,
    as_int,
    as_number,
    as_str,
    as_strs,
    items,
    wrap,
)
from authd.config.mappings import MappingConfig
from authd.errors import ArnError, ConfigError
from authd.gotext import aggregate_message, go_quote
from authd.names import (
    BACKEND_MODES,
    CLUSTER_ID_ENV,
    DEPRECATED_BACKEND_MODES,
    LOG_FORMATS,
    LOG_LEVEL_ALIASES,
    LOG_LEVELS,
    LOG_VERBOSITY_ENV,
)
from authd.token import sts_origin, sts_region


def parse_backend_modes(raw: Sequence[str], warnings: list[str]) -> tuple[str, ...]:
    """Validate a backend list as upstream does; return canonical names, in order.

    Used for `--backend-mode` and for the dynamic backend-mode file.

    Raises:
        ConfigError: the aggregate of `not a valid mode`, `has duplicates`, `at least one`.
    """
    errors = [
        f"backend-mode {go_quote(m)} is not a valid mode"
        for m in raw
        if m not in BACKEND_MODES and m not in DEPRECATED_BACKEND_MODES
    ]
    for mode in raw:
        if mode in DEPRECATED_BACKEND_MODES:
            replacement = DEPRECATED_BACKEND_MODES[mode]
            warnings.append(
                f"warning: backend-mode {go_quote(mode)} is deprecated, "
                f"use {go_quote(replacement)} instead"
            )
    if len(set(raw)) != len(raw):
        listed = " ".join(go_quote(m) for m in raw)
        errors.append(f"backend-mode [{listed}] has duplicates")
    if not raw:
        errors.append("at least one backend-mode must be specified")
    if errors:
        raise ConfigError(aggregate_message(errors))
    canonical = [DEPRECATED_BACKEND_MODES.get(m, m) for m in raw]
    unique = tuple(dict.fromkeys(canonical))
    if len(unique) != len(canonical):
        warnings.append(
            "warning: backend-mode lists the same backend under its old and new name; it runs once"
        )
    return unique


def _sts_origin(val: Located) -> str:
    """Validate one extra STS endpoint with the token verifier's own rule."""
    try:
        return sts_origin(as_str(val))
    except ConfigError as exc:
        val.fail(str(exc))


def _sts_region(val: Located) -> str:
    """Validate one extra STS region name with the token verifier's own rule."""
    try:
        return sts_region(as_str(val))
    except ConfigError as exc:
        val.fail(str(exc))


def _host_port(val: Located) -> str:
    """Validate a `host:port` listen address (host may be empty for all interfaces)."""
    text = as_str(val).strip()
    if not text:
        return ""
    _, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        val.fail(f"{go_quote(text)} is not a host:port address")
    return text


def _port(val: Located) -> int:
    """Read a TCP port (0 picks a free one)."""
    port = as_int(val)
    if not 0 <= port <= 65535:
        val.fail(f"port {port} is out of range 0-65535")
    return port


def _non_negative(conv: Any) -> Any:
    """Wrap a number converter to reject negative values."""

    def read(val: Located) -> Any:
        value = conv(val)
        if value < 0:
            val.fail(f"must not be negative, got {as_str(val)}")
        return value

    return read


def _positive(conv: Any) -> Any:
    """Wrap a number converter to reject zero and negative values."""

    def read(val: Located) -> Any:
        value = conv(val)
        if value <= 0:
            val.fail(f"must be greater than zero, got {as_str(val)}")
        return value

    return read


def _share(val: Located) -> float:
    """A share of the STS allowance: at least 0, below 1 (unproven keys keep some of it)."""
    value = float(as_number(val))
    if not 0.0 <= value < 1.0:
        val.fail(f"must be at least 0 and below 1, got {as_str(val)}")
    return value


@dataclass(frozen=True, slots=True)
class _Setting:
    """How one ServerSettings attribute is found: flag, env, config key, default, converter."""

    attr: str
    flag: str | None
    key: str | None
    conv: Any
    default: Any
    env: str | None = None


def _strings_split(val: Located) -> tuple[str, ...]:
    """A list of strings where each string may itself be comma/space separated."""
    return as_strs(val, split=", \t\n")


_SETTINGS: tuple[_Setting, ...] = (
    _Setting("partition", "--partition", "server.partition", as_str, "aws"),
    _Setting(
        "generate_kubeconfig",
        "--generate-kubeconfig",
        "server.generateKubeconfig",
        as_str,
        "/etc/kubernetes/aws-iam-authenticator/kubeconfig.yaml",
    ),
    _Setting(
        "kubeconfig_pregenerated",
        "--kubeconfig-pregenerated",
        "server.kubeconfigPregenerated",
        as_bool,
        False,
    ),
    _Setting("state_dir", "--state-dir", "server.stateDir", as_str, "/var/aws-iam-authenticator"),
    _Setting("kubeconfig", "--kubeconfig", "server.kubeconfig", as_str, ""),
    _Setting("master", "--master", "server.master", as_str, ""),
    _Setting("address", "--address", "server.address", as_str, "127.0.0.1"),
    _Setting("port", "--port", "server.port", _port, 21362),
    _Setting("hostname", "--hostname", "server.hostname", as_str, "localhost"),
    _Setting(
        "ec2_describe_instances_qps",
        "--ec2-describeInstances-qps",
        "server.ec2DescribeInstancesQps",
        _positive(as_int),
        15,
    ),
    _Setting(
        "ec2_describe_instances_burst",
        "--ec2-describeInstances-burst",
        "server.ec2DescribeInstancesBurst",
        _positive(as_int),
        5,
    ),
    _Setting(
        "ec2_describe_instances_role_arn", None, "server.ec2DescribeInstancesRoleARN", as_str, ""
    ),
    _Setting("source_arn", None, "server.sourceARN", as_str, ""),
    _Setting(
        "extra_sts_endpoints",
        "--extra-sts-endpoint",
        "server.extraSTSEndpoints",
        lambda v: tuple(dict.fromkeys(_sts_origin(i) for i in items(v))),
        (),
    ),
    _Setting(
        "extra_sts_regions",
        "--extra-sts-region",
        "server.extraSTSRegions",
        lambda v: tuple(dict.fromkeys(_sts_region(i) for i in items(v))),
        (),
    ),
    _Setting("dynamicfile_path", "--dynamicfile-path", "server.dynamicfilepath", as_str, ""),
    _Setting(
        "dynamicfile_userid_strict",
        "--dynamicfile-userid-strict",
        "server.dynamicfileUserIDStrict",
        as_bool,
        False,
    ),
    _Setting("dynamic_backend_mode_path", None, "server.dynamicBackendModePath", as_str, ""),
    _Setting("sts_timeout", "--sts-timeout", "server.stsTimeout", _positive(as_duration), 10.0),
    _Setting("sts_qps", "--sts-qps", "server.stsQPS", _positive(as_number), 50.0),
    _Setting("sts_burst", "--sts-burst", "server.stsBurst", _positive(as_int), 100),
    _Setting(
        "sts_reserved_share",
        "--sts-reserved-share",
        "server.stsReservedShare",
        _share,
        0.5,
    ),
    _Setting(
        "report_denial_reason",
        "--report-denial-reason",
        "server.reportDenialReason",
        as_bool,
        False,
    ),
    _Setting(
        "identity_cache_size",
        "--identity-cache-size",
        "server.identityCacheSize",
        _non_negative(as_int),
        100000,
    ),
    _Setting(
        "identity_cache_bytes",
        "--identity-cache-bytes",
        "server.identityCacheBytes",
        _non_negative(as_int),
        16 * 1024 * 1024,
    ),
    _Setting(
        "ec2_cache_ttl", "--ec2-cache-ttl", "server.ec2CacheTTL", _non_negative(as_duration), 900.0
    ),
    _Setting(
        "ec2_batch_window",
        "--ec2-batch-window",
        "server.ec2BatchWindow",
        _non_negative(as_duration),
        0.01,
    ),
    _Setting("health_address", "--health-address", "server.healthAddress", _host_port, ""),
    _Setting("client_ca_file", "--client-ca-file", "server.clientCAFile", as_str, ""),
    _Setting(
        "max_connections_per_client",
        "--max-connections-per-client",
        "server.maxConnectionsPerClient",
        _positive(as_int),
        500,
    ),
    # The listener's limits (docs/server.md, "Connection limits").
    _Setting(
        "max_connections", "--max-connections", "server.maxConnections", _positive(as_int), 1000
    ),
    _Setting(
        "max_header_bytes",
        "--max-header-bytes",
        "server.maxHeaderBytes",
        _positive(as_int),
        16 * 1024,
    ),
    _Setting(
        "max_body_bytes", "--max-body-bytes", "server.maxBodyBytes", _positive(as_int), 1024 * 1024
    ),
    _Setting(
        "header_timeout", "--header-timeout", "server.headerTimeout", _positive(as_duration), 10.0
    ),
    _Setting("body_timeout", "--body-timeout", "server.bodyTimeout", _positive(as_duration), 30.0),
    _Setting("idle_timeout", "--idle-timeout", "server.idleTimeout", _positive(as_duration), 60.0),
    _Setting(
        "log_verbosity", "--log-verbosity", "log-verbosity", as_str, "info", env=LOG_VERBOSITY_ENV
    ),
    _Setting("log_format", "--log-format", None, as_str, "json"),
)
_BY_ATTR = {s.attr: s for s in _SETTINGS}
_SPECIAL_FLAGS = {
    "cluster_ids": "--cluster-id",
    "backend_mode": "--backend-mode",
    "feature_gates": "--feature-gates",
}


class _Sources:
    """Looks a setting up in flags, then env, then the config file (upstream's precedence)."""

    def __init__(
        self, flags: Mapping[str, object], env: Mapping[str, str], file: FileConfig | None
    ) -> None:
        unknown = set(flags) - set(_BY_ATTR) - set(_SPECIAL_FLAGS)
        if unknown:
            raise ConfigError(f"unknown server setting(s): {', '.join(sorted(unknown))}")
        self.flags = flags
        self.env = env
        self.file = file

    def get(self, attr: str, flag: str | None, key: str | None, env: str | None) -> Located | None:
        """Return the highest-precedence value given for one setting, or None."""
        if attr in self.flags and self.flags[attr] is not None:
            return wrap(self.flags[attr], flag or attr)
        if env is not None and self.env.get(env):
            return Located(self.env[env], env)
        if key is None or self.file is None:
            return None
        section, _, name = key.rpartition(".")
        table = self.file.server if section == "server" else self.file.top
        return table.get(name)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    """Every setting of `server` and `init` (server 1, 2, 6; authd 1 in docs/upstream-compat.md).

    Build with `resolve`. Durations are seconds; `backend_mode` holds canonical names in chain
    order; `cluster_ids[0]` is the current cluster ID, later ones are accepted during rotation.
    """

    cluster_ids: tuple[str, ...]
    partition: str = "aws"
    generate_kubeconfig: str = "/etc/kubernetes/aws-iam-authenticator/kubeconfig.yaml"
    kubeconfig_pregenerated: bool = False
    state_dir: str = "/var/aws-iam-authenticator"
    kubeconfig: str = ""
    master: str = ""
    address: str = "127.0.0.1"
    port: int = 21362
    hostname: str = "localhost"
    backend_mode: tuple[str, ...] = ("MountedFile",)
    ec2_describe_instances_qps: int = 15
    ec2_describe_instances_burst: int = 5
    ec2_describe_instances_role_arn: str = ""
    source_arn: str = ""
    scrubbed_accounts: tuple[str, ...] = ()
    extra_sts_endpoints: tuple[str, ...] = ()
    extra_sts_regions: tuple[str, ...] = ()
    dynamicfile_path: str = ""
    dynamicfile_userid_strict: bool = False
    dynamic_backend_mode_path: str = ""
    sts_timeout: float = 10.0
    sts_qps: float = 50.0
    sts_burst: int = 100
    sts_reserved_share: float = 0.5
    report_denial_reason: bool = False
    identity_cache_size: int = 100000
    identity_cache_bytes: int = 16 * 1024 * 1024
    ec2_cache_ttl: float = 900.0
    ec2_batch_window: float = 0.01
    health_address: str = ""
    client_ca_file: str = ""
    max_connections_per_client: int = 500
    max_connections: int = 1000
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 1024 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    log_verbosity: str = "info"
    log_format: str = "json"
    feature_gates: FeatureGates = field(default_factory=FeatureGates)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    config_path: str = ""
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def cluster_id(self) -> str:
        """The current cluster ID (the first one given)."""
        return self.cluster_ids[0]

    @classmethod
    def resolve(
        cls,
        *,
        flags: Mapping[str, object],
        env: Mapping[str, str],
        file: FileConfig | None,
    ) -> ServerSettings:
        """Resolve every setting (flag > env > config file > default) and validate start-up.

        Args:
            flags: only the flags given on the command line, keyed by attribute name
                (`port`, `cluster_ids`, `backend_mode`, `feature_gates`, ...).
            env: the process environment (only upstream's bound variables are read).
            file: the parsed `--config` file, or None.

        Raises:
            ConfigError: the first failure, in upstream's order: role, user and account
                mappings, reserved prefix config, `cluster ID cannot be empty`,
                `invalid partition`, the DynamicFile/dynamicfilepath pair, the backend-mode
                list; then authd's own checks of the remaining settings.
        """
        src = _Sources(flags, env, file)
        warnings: list[str] = list(file.warnings) if file is not None else []
        mapping = MappingConfig.from_file_config(file)
        warnings.extend(mapping.warnings)
        cluster_ids = _cluster_ids(src)
        values: dict[str, Any] = {}
        values["partition"] = _resolve_one(src, "partition")
        if values["partition"] not in PARTITIONS:
            raise ConfigError(
                f"invalid partition {go_quote(values['partition'])}: must be one of "
                + ", ".join(PARTITIONS)
            )
        values["dynamicfile_path"] = _resolve_one(src, "dynamicfile_path")
        raw_modes = _raw_backend_modes(src)
        if "DynamicFile" in raw_modes and not values["dynamicfile_path"]:
            raise ConfigError("dynamicfile is set in backend-mode but dynamicfilepath is not set")
        if (
            "DynamicFile" not in raw_modes
            and values["dynamicfile_path"]
            # The backend-mode file may switch DynamicFile on later (docs/server.md).
            and not _resolve_one(src, "dynamic_backend_mode_path")
        ):
            raise ConfigError("dynamicfile is not set in backend-mode but dynamicfilepath is set")
        backend_mode = parse_backend_modes(raw_modes, warnings)
        for setting in _SETTINGS:
            if setting.attr not in values:
                values[setting.attr] = _resolve_one(src, setting.attr)
        _check_extras(values, warnings)
        return cls(
            cluster_ids=cluster_ids,
            backend_mode=backend_mode,
            scrubbed_accounts=_scrubbed(file, warnings),
            feature_gates=_feature_gates(src, file, warnings),
            mapping=mapping,
            config_path=file.path if file is not None else "",
            warnings=tuple(warnings),
            **values,
        )


def _resolve_one(src: _Sources, attr: str) -> Any:
    """Resolve and convert one table-driven setting."""
    setting = _BY_ATTR[attr]
    val = src.get(attr, setting.flag, setting.key, setting.env)
    return setting.default if val is None else setting.conv(val)


def _cluster_ids(src: _Sources) -> tuple[str, ...]:
    """Read the cluster IDs (a string or a list); the first is current, none may be empty."""
    val = src.get("cluster_ids", "--cluster-id", "clusterID", CLUSTER_ID_ENV)
    ids = as_cluster_ids(val)
    if not ids or not all(ids):
        raise ConfigError("cluster ID cannot be empty")
    return tuple(dict.fromkeys(ids))


def _raw_backend_modes(src: _Sources) -> list[str]:
    """The backend list as given: flags comma-separated, the file a list or a string."""
    val = src.get("backend_mode", "--backend-mode", "server.backendMode", None)
    if val is None:
        return ["MountedFile"]
    return list(_strings_split(val))


def _scrubbed(file: FileConfig | None, warnings: list[str]) -> tuple[str, ...]:
    """Read `server.scrubbedAccounts` (config file only, as upstream)."""
    if file is None:
        return ()
    return tuple(as_account(v, warnings) for v in items(file.server.get("scrubbedAccounts")))


def _feature_gates(src: _Sources, file: FileConfig | None, warnings: list[str]) -> FeatureGates:
    """Read `--feature-gates`; the config key is recognised but, as upstream, not applied."""
    if file is not None and "feature-gates" in file.top:
        warnings.append(
            f"{file.top['feature-gates'].where}: feature gates in the config file are not "
            "applied (as upstream); pass --feature-gates instead"
        )
    given = src.flags.get("feature_gates")
    if given is None:
        return FeatureGates()
    if isinstance(given, FeatureGates):
        return given
    try:
        if isinstance(given, Mapping):
            return FeatureGates.from_mapping(given)
        return FeatureGates.parse(str(given))
    except ConfigError as exc:
        raise ConfigError(f"--feature-gates: {exc}") from exc


def _check_extras(values: dict[str, Any], warnings: list[str]) -> None:
    """authd's checks of settings upstream reads without validating."""
    level = LOG_LEVEL_ALIASES.get(values["log_verbosity"], values["log_verbosity"])
    values["log_verbosity"] = level
    if level not in LOG_LEVELS:
        raise ConfigError(
            f"Invalid log level {go_quote(level)}. Valid values are: " + ", ".join(LOG_LEVELS)
        )
    if values["log_format"] not in LOG_FORMATS:
        warnings.append(
            f"Unknown log format specified ({values['log_format']}), will use default text "
            "formatter instead."
        )
        values["log_format"] = "text"
    role_arn = values["ec2_describe_instances_role_arn"]
    if role_arn:
        try:
            canonicalize(role_arn)
        except ArnError as exc:
            raise ConfigError(f"describeinstancesrole {role_arn} is not a valid arn") from exc
    if not values["hostname"]:
        # The hostname is the webhook kubeconfig's server URL host and the certificate's SAN.
        raise ConfigError("hostname must not be empty")
