"""The guard against server-side request forgery: synchub fetches URLs that people type
(connection base and token URLs, the alert webhook), so without it anyone who may edit a
connection could make a worker read the cloud metadata service or an internal admin page.

A URL is refused when its host is, or resolves to, an address that is not public: loopback,
private, link-local (169.254.0.0/16 and fe80::/10, where cloud metadata lives), shared,
reserved, multicast or unspecified. SYNCHUB_ALLOW_PRIVATE_URLS lists networks that may be
reached anyway (an on-premises HaloPSA, the simulators of the tests on 127.0.0.1).

It is checked when a URL is saved (a sentence for the person who typed it) and before every
request, redirect hops included (`guard` returns the requests hook that re-checks each
Location), because a name can resolve differently later and a public server can redirect
inward. A name that resolves to a public address for those checks and to a private one a
moment later (DNS rebinding) is caught by a third: sessions made by `session()` check the
address each new connection actually reached.
"""
import ipaddress
import socket
import threading
import time
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .connectors.errors import ConfigError

SETTING = "ALLOW_PRIVATE_URLS"
# A host's addresses are looked up again after this long: one lookup per host, not per request.
_CACHE_SECONDS = 10.0
_cache = {}  # (host, port) -> (expires at, addresses)
_cache_lock = threading.Lock()


class UnsafeURL(ConfigError):
    """A URL that points somewhere synchub must not send requests to."""


def _allowed_networks(allowed):
    if allowed is not None:
        return allowed
    from flask import current_app, has_app_context

    if has_app_context():
        return current_app.config[SETTING]
    # A connector's own threads run without an app context: the process's environment
    # is where the app's value came from.
    from .config import from_environment

    return from_environment(SETTING)


def _kind(address):
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (where cloud metadata services answer)"
    if address.is_private:
        return "a private address"
    return "an address that is not public"


def _is_public(address):
    return address.is_global and not address.is_multicast


def _addresses(host, port):
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get((host, port))
    if hit and hit[0] > now:
        return hit[1]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []  # not resolvable: the request itself will fail with a connection error
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    with _cache_lock:
        _cache[(host, port)] = (now + _CACHE_SECONDS, addresses)
    return addresses


def check_url(url, allowed=None, what="The URL"):
    """Raise UnsafeURL (a sentence naming the URL's host, never its path or query) when the
    URL may not be fetched; otherwise return it."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except (ValueError, TypeError):
        raise UnsafeURL(f"{what} is not a valid URL.") from None
    if parts.scheme not in ("http", "https") or not host:
        raise UnsafeURL(f"{what} must be an http:// or https:// URL with a host name.")
    networks = _allowed_networks(allowed)
    for address in _addresses(host, port or (443 if parts.scheme == "https" else 80)):
        _refuse_unless_allowed(address, networks, f"{what} points to", host)
    return url


def _refuse_unless_allowed(address, networks, said, host):
    plain = getattr(address, "ipv4_mapped", None) or address
    if _is_public(plain) or any(plain in network for network in networks):
        return
    shown = host if str(plain) == host else f"{host} ({plain})"
    raise UnsafeURL(f"{said} {shown}, {_kind(plain)}: synchub does not send requests there "
                    "unless SYNCHUB_ALLOW_PRIVATE_URLS lists its network.")


def guard(url, allowed=None, what="The URL"):
    """Check `url` now, and return the `hooks=` argument for requests that checks the target
    of every redirect before it is followed."""
    check_url(url, allowed, what)

    def check_redirect(response, *args, **kwargs):
        if response.is_redirect:
            check_url(urljoin(response.url, response.headers["Location"]), allowed, "A redirect")
        return response

    return {"response": [check_redirect]}


def check_settings(values, allowed=None):
    """Check every URL among a connection's settings or credentials (any key ending in
    `url`, and any text that starts with http:// or https://, nested values included)."""
    for key, value in _texts(values):
        if value.strip() and (key.lower().endswith("url") or value.startswith(("http://", "https://"))):
            check_url(value, allowed, f"The setting {key!r}")


def _texts(value, key=""):
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _texts(item, str(name))
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _texts(item, key)


# -- the address actually connected to ----------------------------------------------------
# The checks above resolve the name themselves; the HTTP library resolves it again when it
# connects. A name whose answers change in between (DNS rebinding: a public address for the
# check, 127.0.0.1 a moment later) would pass them, so sessions made by `session()` also
# check the address each new connection reached, before anything is sent on it.
class _CheckedConnect:
    def _new_conn(self):
        sock = super()._new_conn()
        try:
            peer = ipaddress.ip_address(sock.getpeername()[0].split("%", 1)[0])
            _refuse_unless_allowed(peer, _allowed_networks(None), "The connection to", self.host)
        except BaseException:
            sock.close()
            raise
        return sock


class _HTTPConnection(_CheckedConnect, HTTPConnection):
    pass


class _HTTPSConnection(_CheckedConnect, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class GuardedAdapter(HTTPAdapter):
    """requests' adapter whose connections check the address they reached. (Through a proxy
    from HTTPS_PROXY it is the proxy that is reached: then only the checks by name apply.)"""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def session(pool_connections=10, pool_maxsize=10, max_retries=0, base=requests.Session):
    """A requests.Session (of class `base`) for URLs people typed: every connection checked.
    Retries are the caller's (classified, rate limited), so urllib3 adds none of its own by
    default."""
    new = base()
    adapter = GuardedAdapter(pool_connections=pool_connections, pool_maxsize=pool_maxsize, max_retries=max_retries)
    new.mount("http://", adapter)
    new.mount("https://", adapter)
    return new
