"""Render username and group templates from an identity (mapping 6 in docs/upstream-compat.md).

Plain substring replacement of every occurrence, in upstream's order; an unknown `{{...}}`
stays literal. `{{EC2PrivateDNSName}}` needs an EC2 lookup, which the caller performs (after
`instance_id` has vouched for the session name) and passes in as `private_dns_name`.
"""

from __future__ import annotations

import re

from authd.errors import TemplateError
from authd.identity import Identity

EC2_PRIVATE_DNS_NAME = "{{EC2PrivateDNSName}}"
_INSTANCE_ID = re.compile(r"i-(\w{8}|\w{17})\Z")


def needs_private_dns(template: str) -> bool:
    """True when rendering `template` needs the EC2 private DNS name of the caller's instance."""
    return EC2_PRIVATE_DNS_NAME in template


def instance_id(identity: Identity) -> str:
    """Return the EC2 instance ID carried as the identity's session name.

    Raises:
        TemplateError: `SessionName did not contain an instance id` unless the session name
            matches `^i-(\\w{8}|\\w{17})$` (so no EC2 lookup is made for anything else).
    """
    if not _INSTANCE_ID.match(identity.session_name):
        raise TemplateError("SessionName did not contain an instance id")
    return identity.session_name


def render(template: str, identity: Identity, *, private_dns_name: str | None = None) -> str:
    """Replace every placeholder of `template` with the identity's values.

    `{{AccountID}}`, `{{SessionName}}` (each `@` becomes `-`), `{{SessionNameRaw}}`,
    `{{AccessKeyID}}`, and `{{EC2PrivateDNSName}}` from `private_dns_name`.

    Raises:
        TemplateError: the template needs the private DNS name, the session name is not an
            instance ID, or `private_dns_name` was not given.
    """
    if "{{" not in template:
        return template
    text = template
    if needs_private_dns(text):
        instance_id(identity)
        if private_dns_name is None:
            raise TemplateError("no EC2 private DNS name was looked up for this template")
        # Upstream substitutes the DNS name first, so the later placeholders apply to it too.
        text = text.replace(EC2_PRIVATE_DNS_NAME, private_dns_name)
    text = text.replace("{{AccountID}}", identity.account_id)
    text = text.replace("{{SessionName}}", identity.session_name.replace("@", "-"))
    text = text.replace("{{SessionNameRaw}}", identity.session_name)
    return text.replace("{{AccessKeyID}}", identity.access_key_id)
