"""The `token` command's settings in the config file: cluster ID, role, session, region, flags.

Read from the same `FileConfig` the server reads, so a value means the same to both (an
unquoted `clusterID: 0123` is `123` for each). Precedence over flags and the environment is
the CLI's job; here a key the file does not set is None.
"""

from __future__ import annotations

from dataclasses import dataclass

from authd.config.file import FileConfig
from authd.config.located import Located, as_bool, as_cluster_ids, as_str


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientFileSettings:
    """The config file's `token` keys (docs/client.md), typed; None where the file is silent."""

    cluster_id: str | None = None
    role: str | None = None
    external_id: str | None = None
    session_name: str | None = None
    region: str | None = None
    token_only: bool | None = None
    forward_session_name: bool | None = None
    cache: bool | None = None

    @classmethod
    def from_file_config(cls, file: FileConfig) -> ClientFileSettings:
        """Read the keys; a list of cluster IDs (a server's rotation) gives its first, current one.

        Raises:
            ConfigError: a value of the wrong type, with the file, line and key.
        """
        top = file.top
        ids = as_cluster_ids(top.get("clusterID"))
        return cls(
            cluster_id=ids[0] if ids else None,
            role=_text(top.get("role")),
            external_id=_text(top.get("externalID")),
            session_name=_text(top.get("sessionName")),
            region=_text(top.get("region")),
            token_only=_flag(top.get("tokenOnly")),
            forward_session_name=_flag(top.get("forwardSessionName")),
            cache=_flag(top.get("cache")),
        )


def _text(val: Located | None) -> str | None:
    """A string setting, or None when absent or null."""
    return None if val is None or val.value is None else as_str(val)


def _flag(val: Located | None) -> bool | None:
    """A boolean setting, or None when absent or null."""
    return None if val is None or val.value is None else as_bool(val)
