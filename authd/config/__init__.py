"""Frozen configuration values, built by named constructors from flags, environment and file.

- `FileConfig` (`file`): the YAML or JSON config file, read once into located values
  (`located`, `yamlevents`), so every error names the file, the line and the key path
  (`config.yaml:12: server.mapRoles[3].rolearn: ...`) in its text and in its `path`, `line`
  and `key` attributes.
- `MappingConfig` (`mappings`): the MountedFile mappings, validated with upstream's texts.
- `ServerSettings` (`settings`): every `server`/`init` setting with upstream's precedence.
- `ClientFileSettings` (`client`): the `token` command's keys of the same file.
- `FeatureGates` (`gates`), and upstream's names for backend modes and log levels (`authd.names`).

Upstream spellings (`mapRoles`, `rolearn`, `roleARN`) appear only in this package.
Warnings are returned on the values (`.warnings`), never printed here.
"""

from __future__ import annotations

from authd.config.client import ClientFileSettings
from authd.config.file import RELOADABLE_SERVER_KEYS, FileConfig
from authd.config.gates import FeatureGates
from authd.config.located import parse_duration
from authd.config.mappings import MappingConfig, RoleMapping, SSOSpec, UserMapping
from authd.config.settings import ServerSettings
from authd.names import (
    BACKEND_MODES,
    CLUSTER_ID_ENV,
    DEPRECATED_BACKEND_MODES,
    LOG_FORMATS,
    LOG_LEVELS,
    LOG_VERBOSITY_ENV,
)

__all__ = [
    "BACKEND_MODES",
    "CLUSTER_ID_ENV",
    "DEPRECATED_BACKEND_MODES",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "LOG_VERBOSITY_ENV",
    "RELOADABLE_SERVER_KEYS",
    "ClientFileSettings",
    "FeatureGates",
    "FileConfig",
    "MappingConfig",
    "RoleMapping",
    "SSOSpec",
    "ServerSettings",
    "UserMapping",
    "parse_duration",
]
