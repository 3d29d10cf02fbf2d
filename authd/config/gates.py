"""Upstream's feature gates, parsed from `--feature-gates` text or a mapping."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from authd.errors import ConfigError
from authd.gotext import parse_bool

_GATES = {
    "ConfiguredInitDirectories": "configured_init_directories",
    "IAMIdentityMappingCRD": "iam_identity_mapping_crd",
    "RolePathMatch": "role_path_match",
    "SSORoleMatch": "sso_role_match",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureGates:
    """Upstream's feature gates plus authd's own `RolePathMatch`; all Alpha, all off by default.

    See mapping 10 in docs/upstream-compat.md. `RolePathMatch` (authd's): a role entry whose ARN
    has a path (MountedFile, EKSConfigMap, CRD) also matches the sessions of that role, whose
    assumed-role ARN never carries the path (docs/troubleshooting.md, `role_path`).
    """

    configured_init_directories: bool = False
    iam_identity_mapping_crd: bool = False
    role_path_match: bool = False
    sso_role_match: bool = False

    def enabled(self, name: str) -> bool:
        """True when the gate spelled `name` (`RolePathMatch`, `SSORoleMatch`, ...) is on.

        Raises:
            ConfigError: `unrecognized feature gate: X`.
        """
        attr = _GATES.get(name)
        if attr is None:
            raise ConfigError(f"unrecognized feature gate: {name}")
        return bool(getattr(self, attr))

    @classmethod
    def parse(cls, text: str) -> FeatureGates:
        """Parse `--feature-gates` text: `Name=bool,...` (`AllAlpha`, `AllBeta` accepted).

        Raises:
            ConfigError: an unknown gate (`unrecognized feature gate: X`) or a bad value.
        """
        values: dict[str, bool] = {}
        for part in text.split(","):
            item = part.strip()
            if not item:
                continue
            name, sep, raw = item.partition("=")
            name, raw = name.strip(), raw.strip()
            if not sep:
                raise ConfigError(f"missing bool value for {name}")
            try:
                values[name] = parse_bool(raw)
            except ValueError as exc:
                raise ConfigError(f"invalid value of {name}={raw}, err: {exc}") from exc
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, bool]) -> FeatureGates:
        """Build gates from `{name: bool}`; explicit gates win over `AllAlpha`.

        Raises:
            ConfigError: `unrecognized feature gate: X`.
        """
        for name in values:
            if name not in _GATES and name not in ("AllAlpha", "AllBeta"):
                raise ConfigError(f"unrecognized feature gate: {name}")
        # Every gate is Alpha, so AllAlpha sets them all and AllBeta none.
        base = bool(values.get("AllAlpha", False))
        kwargs = {attr: bool(values.get(name, base)) for name, attr in _GATES.items()}
        return cls(**kwargs)
