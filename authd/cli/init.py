"""`authd init`: pre-generate cert, key and webhook kubeconfig as upstream does.

See server 6 in docs/upstream-compat.md.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import replace

from authd import __commit__, __version__
from authd.cli.server import load_settings

FLAGS: dict[str, object] = {"hostname": None, "address": None}
KUBECONFIG_NAME = "aws-iam-authenticator.kubeconfig"


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    """Register `init` and its flags."""
    p = sub.add_parser("init", parents=parents, help="pre-generate cert, key and kubeconfig")
    p.add_argument("--hostname", default=None, help="host in the kubeconfig URL and cert SAN")
    p.add_argument("--address", default=None, help="IP address in the cert SAN")
    p.set_defaults(run=run, error_prefix="could not initialize: ")


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Write the files into the current directory, or the configured ones with the gate on.

    Existing cert and key are reused, never replaced; the kubeconfig is always rewritten.
    """
    import structlog

    from authd import logs
    from authd.server.daemon import write_state

    print(f'Authenticator Version: "{__version__}", "{__commit__}"', flush=True)
    configured = load_settings(args, env, FLAGS)
    logs.configure(fmt=args.log_format or "text", level=configured.log_verbosity)
    log = structlog.get_logger("authd.init")
    in_place = configured.feature_gates.configured_init_directories
    settings = replace(configured, kubeconfig_pregenerated=False)
    if not in_place:
        here = os.getcwd()
        settings = replace(
            settings, state_dir=here, generate_kubeconfig=os.path.join(here, KUBECONFIG_NAME)
        )
    pair = write_state(settings)
    if in_place:
        log.info(f"certificate generated at {pair.cert_path} on kubernetes master node(s)")
        log.info(f"key generated at {pair.key_path} on kubernetes master node(s)")
        log.info(
            f"kubeconfig generated at {settings.generate_kubeconfig} on kubernetes master node(s)"
        )
    else:
        for name in ("cert.pem", "key.pem"):
            destination = os.path.join(configured.state_dir, name)
            log.info(f"copy {name} to {destination} on kubernetes master node(s)")
        target = configured.generate_kubeconfig
        log.info(f"copy {KUBECONFIG_NAME} to {target} on kubernetes master node(s)")
    log.info(
        "configure your apiserver with "
        f"`--authentication-token-webhook-config-file={configured.generate_kubeconfig}` "
        "to enable authentication with aws-iam-authenticator"
    )
    return 0
