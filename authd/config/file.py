"""The config file (`--config`): read once into located values, its keys checked and sorted.

Every command reads the file here: `server` and `verify` through `ServerSettings`, `token`
through `ClientFileSettings`, the reloader through `FileConfig.from_bytes`. Keys are
case-insensitive as upstream's viper makes them; unknown keys become warnings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from authd import jsoncodec
from authd.config.located import Located, kind, plain, section
from authd.config.yamlevents import read_tree
from authd.errors import ConfigError
from authd.gotext import go_quote

# The `token` command's keys (docs/client.md); the server ignores them.
CLIENT_KEYS = (
    "role",
    "externalID",
    "sessionName",
    "region",
    "tokenOnly",
    "forwardSessionName",
    "cache",
)
_TOP_KEYS = (
    "clusterID",
    "server",
    "log-verbosity",
    "feature-gates",
    "token",
    "output",
    "partition",
    *CLIENT_KEYS,
)
_SERVER_KEYS = (
    "partition",
    "generateKubeconfig",
    "kubeconfigPregenerated",
    "stateDir",
    "kubeconfig",
    "master",
    "address",
    "port",
    "hostname",
    "backendMode",
    "ec2DescribeInstancesQps",
    "ec2DescribeInstancesBurst",
    "ec2DescribeInstancesRoleARN",
    "sourceARN",
    "scrubbedAccounts",
    "dynamicfilepath",
    "dynamicfileUserIDStrict",
    "dynamicBackendModePath",
    "reservedPrefixConfig",
    "mapRoles",
    "mapUsers",
    "mapAccounts",
    "extraSTSEndpoints",
    "extraSTSRegions",
    "stsTimeout",
    "stsQPS",
    "stsReservedShare",
    "reportDenialReason",
    "stsBurst",
    "identityCacheSize",
    "identityCacheBytes",
    "ec2CacheTTL",
    "ec2BatchWindow",
    "healthAddress",
    "clientCAFile",
    "maxConnectionsPerClient",
    "maxConnections",
    "maxHeaderBytes",
    "maxBodyBytes",
    "headerTimeout",
    "bodyTimeout",
    "idleTimeout",
)
RELOADABLE_SERVER_KEYS = frozenset({"mapRoles", "mapUsers", "mapAccounts", "reservedPrefixConfig"})


@dataclass(frozen=True, slots=True, kw_only=True)
class FileConfig:
    """The parsed config file: top-level and `server` keys with their locations.

    Build with `from_file`, `from_bytes` or `from_text`; read typed values through
    `MappingConfig`, `ServerSettings` and `ClientFileSettings`. `warnings` lists unknown and
    duplicate keys.
    """

    path: str
    top: Mapping[str, Located]
    server: Mapping[str, Located]
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_file(cls, path: str | Path) -> FileConfig:
        """Read and parse a config file; the format comes from the extension (`.json` or YAML).

        Raises:
            ConfigError: `Can't read configuration file "<path>": ...` when the file cannot be
                read or parsed, with the line of a syntax error; `path` is always set.
        """
        name = str(path)
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"Can't read configuration file {go_quote(name)}: {exc.strerror or exc}",
                path=name,
            ) from exc
        return cls.from_bytes(data, path=name)

    @classmethod
    def from_bytes(cls, data: bytes, *, path: str) -> FileConfig:
        """Parse one version of the config file already read (the reloader hashes it first).

        Raises:
            ConfigError: as `from_file`, `Can't read configuration file "<path>": ...`.
        """
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"Can't read configuration file {go_quote(path)}: not UTF-8 text ({exc.reason})",
                path=path,
            ) from exc
        try:
            return cls.from_text(text, path=path)
        except ConfigError as exc:
            raise exc.prefixed(f"Can't read configuration file {go_quote(path)}") from exc

    @classmethod
    def from_text(cls, text: str, *, path: str) -> FileConfig:
        """Parse config text; `path` names it in messages and picks JSON when it ends `.json`.

        Raises:
            ConfigError: a syntax error (`<path>:<line>: <problem>`) or a top level that is
                not a mapping; `path` and (where known) `line` are set.
        """
        if path.lower().endswith(".json"):
            try:
                jsoncodec.loads(text)
            except json.JSONDecodeError as exc:
                message = f"{path}:{exc.lineno}: {exc.msg}"
                raise ConfigError(message, path=path, line=exc.lineno) from exc
            except ValueError as exc:  # nesting too deep for the json module
                raise ConfigError(f"{path}: {exc}", path=path) from None
        warnings: list[str] = []
        root = read_tree(text, src=path, warnings=warnings)
        if root is None:
            return cls(path=path, top={}, server={})
        if not isinstance(root.value, dict) and root.value is not None:
            root.fail(f"the config file must be a mapping of keys, got {kind(root.value)}")
        top = section(root, _TOP_KEYS, warnings)
        server = section(top.get("server"), _SERVER_KEYS, warnings)
        return cls(
            path=path,
            top=MappingProxyType(top),
            server=MappingProxyType(server),
            warnings=tuple(warnings),
        )

    def restart_values(self) -> dict[str, object]:
        """Every server setting in the file that a reload does not apply, by key path.

        The reloadable keys (`server.mapRoles`, `mapUsers`, `mapAccounts`,
        `reservedPrefixConfig`) and the `token` command's keys are left out; comparing two
        versions' results names the settings that only take effect at the next restart
        (docs/reload.md).
        """
        values: dict[str, object] = {
            key: plain(val)
            for key, val in self.top.items()
            if key != "server" and key not in CLIENT_KEYS
        }
        for key, val in self.server.items():
            if key not in RELOADABLE_SERVER_KEYS:
                values[f"server.{key}"] = plain(val)
        return values
