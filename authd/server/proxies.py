"""Pick the proxy for an outgoing request as upstream's Go transport does, and route through it.

`Proxies.from_env` reads `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` (each in lower case first,
then upper case, as httpx and Python's urllib read them); the CLI hands it the environment.
`Proxies.proxy_for(url)` follows Go's `http.ProxyFromEnvironment`, which upstream's STS and EC2
clients use: https goes through `HTTPS_PROXY`, http through `HTTP_PROXY`; a `NO_PROXY` entry
exempts a host (`*` all hosts, `example.com` the domain and its subdomains, `.example.com` the
subdomains only, an IP address or a CIDR block, each optionally with `:port`); loopback
(`localhost`, 127.0.0.0/8, ::1) is never proxied. `ProxyRouter` is the httpx transport that
applies the answer to every request (docs/sts-protection.md, "Proxies").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

__all__ = ["Proxies", "ProxyRouter"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_DECISIONS_KEPT = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Proxies:
    """The proxies configured for outgoing requests; all empty means every request goes direct.

    Attributes:
        http: proxy URL for `http://` requests ("" for none).
        https: proxy URL for `https://` requests ("" for none).
        no_proxy: the `NO_PROXY` entries, lower-cased, empty ones dropped.
    """

    http: str = ""
    https: str = ""
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Proxies:
        """The proxies an environment names; a proxy without a scheme is an http one, as in Go."""

        def read(name: str) -> str:
            return (env.get(name.lower()) or env.get(name.upper()) or "").strip()

        entries = read("no_proxy").lower().split(",")
        return cls(
            http=_with_scheme(read("http_proxy")),
            https=_with_scheme(read("https_proxy")),
            no_proxy=tuple(entry.strip() for entry in entries if entry.strip()),
        )

    def __bool__(self) -> bool:
        """Whether any request may be proxied at all."""
        return bool(self.http or self.https)

    def proxy_for(self, url: httpx.URL | str) -> str | None:
        """The proxy URL to send `url` through, or None to connect directly."""
        url = httpx.URL(url)
        proxy = {"http": self.http, "https": self.https}.get(url.scheme, "")
        if not proxy or _is_loopback(url.host):
            return None
        port = url.port or _DEFAULT_PORTS.get(url.scheme, 0)
        if any(_exempts(entry, url.host.lower(), port) for entry in self.no_proxy):
            return None
        return proxy


class ProxyRouter(httpx.AsyncBaseTransport):
    """Sends each request directly or through a proxy transport, as `Proxies` decides.

    StsClient sends through it when the environment names a proxy (with none, it sends on the
    direct transport itself): the request's timeouts apply either way. One proxy transport is
    made per proxy URL, on first use; closing the router closes them and the direct one.
    """

    def __init__(
        self,
        direct: httpx.AsyncBaseTransport,
        proxies: Proxies,
        *,
        through: Callable[[str], httpx.AsyncBaseTransport],
    ) -> None:
        """Route between `direct` and `through(proxy_url)` transports.

        Args:
            direct: for requests no proxy applies to.
            proxies: which requests go through which proxy.
            through: makes the transport for one proxy URL (an `httpx.AsyncHTTPTransport`
                with `proxy=` set, in authd).
        """
        self._direct = direct
        self._proxies = proxies
        self._through = through
        self._via: dict[str, httpx.AsyncBaseTransport] = {}
        self._decided: dict[tuple[str, str, int | None], str | None] = {}

    def transport_for(self, url: httpx.URL) -> httpx.AsyncBaseTransport:
        """The transport a request to `url` goes through."""
        if not self._proxies:
            return self._direct
        key = (url.scheme, url.host, url.port)
        if key not in self._decided:
            if len(self._decided) >= _DECISIONS_KEPT:
                self._decided.clear()
            self._decided[key] = self._proxies.proxy_for(url)
        proxy = self._decided[key]
        if proxy is None:
            return self._direct
        if proxy not in self._via:
            self._via[proxy] = self._through(proxy)
        return self._via[proxy]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` through the transport `transport_for` picks; its errors pass as is."""
        transport = self.transport_for(request.url)
        if transport is not self._direct and "target" in request.extensions:
            request = _whole_url(request)
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        """Close the direct transport and every proxy transport made so far."""
        await self._direct.aclose()
        for transport in self._via.values():
            await transport.aclose()


def _whole_url(request: httpx.Request) -> httpx.Request:
    """`request` with its `target` extension moved into the URL.

    httpcore's proxy connections copy a request's extensions onto the CONNECT they send
    first, so a `target` there would replace the tunnel's `host:port`; the path and query
    go in the URL instead (they need no re-encoding: authd.token allowed only query bytes).
    """
    extensions = dict(request.extensions)
    target = extensions.pop("target")
    return httpx.Request(
        request.method,
        request.url.copy_with(raw_path=target),
        headers=request.headers,
        stream=request.stream,
        extensions=extensions,
    )


def _with_scheme(proxy: str) -> str:
    """`proxy:3128` means `http://proxy:3128` (Go's reading); "" stays ""."""
    if proxy and "://" not in proxy:
        return f"http://{proxy}"
    return proxy


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`host` as an IP address, or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 and ::1: Go never proxies them, whatever the environment says."""
    if host.lower() == "localhost":
        return True
    address = _ip(host)
    return address is not None and address.is_loopback


def _exempts(entry: str, host: str, port: int) -> bool:
    """Whether one NO_PROXY entry covers `host:port` (Go's httpproxy rules)."""
    if entry == "*":
        return True
    address = _ip(host)
    if "/" in entry:
        return _in_block(address, entry)
    name, entry_port = _split_port(entry)
    if entry_port is not None and entry_port != port:
        return False
    entry_address = _ip(name)
    if entry_address is not None:
        return address == entry_address
    name = name.removeprefix("*")
    if name.startswith("."):
        return host.endswith(name)
    return host == name or host.endswith(f".{name}")


def _in_block(address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, block: str) -> bool:
    """Whether `address` (None for a host name) lies in the CIDR `block`."""
    try:
        network = ipaddress.ip_network(block, strict=False)
    except ValueError:
        return False
    return address is not None and address in network


def _split_port(entry: str) -> tuple[str, int | None]:
    """`host:port` -> (host, port); a bare host or IPv6 address -> (it, None)."""
    if entry.startswith("["):
        name, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
        return name, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        return name, int(port) if port.isdigit() else None
    return entry, None
