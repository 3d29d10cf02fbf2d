"""Upstream's names for config values: backend modes, log levels and formats, env variables.

The one list of each (pure core, no imports): config, metrics, logs and the CLI read them here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

BACKEND_MODES: tuple[str, ...] = ("MountedFile", "EKSConfigMap", "CRD", "DynamicFile")
DEPRECATED_BACKEND_MODES: Mapping[str, str] = MappingProxyType(
    {"File": "MountedFile", "ConfigMap": "EKSConfigMap"}
)
KUBE_BACKENDS: tuple[str, ...] = ("EKSConfigMap", "CRD")
"""The backend modes read from the Kubernetes API rather than from files."""
LOG_LEVELS: tuple[str, ...] = ("panic", "fatal", "error", "warning", "info", "debug", "trace")
LOG_LEVEL_ALIASES: Mapping[str, str] = MappingProxyType({"warn": "warning"})
LOG_FORMATS: tuple[str, ...] = ("json", "text")
CLUSTER_ID_ENV = "KUBERNETES_AWS_AUTHENTICATOR_CLUSTER_ID"
LOG_VERBOSITY_ENV = "AWS_IAM_AUTHENTICATOR_LOG_VERBOSITY"
