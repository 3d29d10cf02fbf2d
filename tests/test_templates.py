"""Username and group template rendering (mapping 6 in docs/upstream-compat.md)."""

from __future__ import annotations

import pytest

from authd.errors import TemplateError
from authd.identity import Identity
from authd.mapping.templates import instance_id, needs_private_dns, render


def _identity(session: str = "alice@example.com") -> Identity:
    """An assumed-role identity with the given session name."""
    return Identity(
        arn=f"arn:aws:sts::000000000000:assumed-role/Admin/{session}",
        canonical_arn="arn:aws:iam::000000000000:role/Admin",
        account_id="000000000000",
        user_id=f"AROAEXAMPLE:{session}",
        session_name=session,
        access_key_id="ASIAEXAMPLE",
    )


def test_every_placeholder_is_replaced_everywhere() -> None:
    """Each placeholder is replaced at every occurrence, SessionName with @ turned into -."""
    out = render(
        "{{AccountID}}/{{SessionName}}/{{SessionNameRaw}}/{{AccessKeyID}}/{{AccountID}}",
        _identity(),
    )
    assert out == "000000000000/alice-example.com/alice@example.com/ASIAEXAMPLE/000000000000"


def test_unknown_placeholders_stay_literal() -> None:
    """An unknown or misspelt placeholder is left as written."""
    assert render("x-{{Unknown}}-{{accountid}}", _identity()) == "x-{{Unknown}}-{{accountid}}"


def test_plain_text_is_unchanged() -> None:
    """A template without placeholders renders to itself."""
    assert render("kubernetes-admin", _identity()) == "kubernetes-admin"


def test_needs_private_dns() -> None:
    """Only the exact EC2PrivateDNSName placeholder needs an EC2 lookup."""
    assert needs_private_dns("system:node:{{EC2PrivateDNSName}}")
    assert not needs_private_dns("system:node:{{SessionName}}")
    assert not needs_private_dns("{{ec2privatednsname}}")


@pytest.mark.parametrize("session", ["i-0123abcd", "i-0123456789abcdef0"])
def test_private_dns_name_is_rendered_for_instance_sessions(session: str) -> None:
    """With an 8- or 17-character instance ID session, the given DNS name is substituted."""
    identity = _identity(session)
    assert instance_id(identity) == session
    out = render(
        "system:node:{{EC2PrivateDNSName}}", identity, private_dns_name="ip-10-0-0-1.ec2.internal"
    )
    assert out == "system:node:ip-10-0-0-1.ec2.internal"


@pytest.mark.parametrize(
    "session", ["alice@example.com", "i-0123abc", "i-0123456789abcdef", "x-0123abcd", "", "i-"]
)
def test_session_name_must_be_an_instance_id(session: str) -> None:
    """Any other session name fails with upstream's text, even when a DNS name is offered."""
    with pytest.raises(TemplateError, match=r"^SessionName did not contain an instance id$"):
        render("{{EC2PrivateDNSName}}", _identity(session), private_dns_name="ip.internal")


def test_private_dns_name_required_when_needed() -> None:
    """Rendering the EC2 placeholder without a looked-up name is an error, not a literal."""
    with pytest.raises(TemplateError, match="no EC2 private DNS name"):
        render("{{EC2PrivateDNSName}}", _identity("i-0123abcd"))
