"""Who may change things through the dashboard, and the headers every answer carries.

The security model (README, "Dashboard"):

- Reading is open to whoever reaches the port, as ``/metrics`` is.
- Control needs ``http.token``: every request that changes something carries
  it as ``Authorization: Bearer <token>``. A header, never a cookie, so a page
  on another site cannot make a browser send it; and a cross-site request with
  that header or a JSON body needs a CORS preflight, which is never granted.
- Without a token the dashboard is read-only; bound beyond loopback that way,
  the gateway says so in a warning at startup.
- Every answer forbids framing (clickjacking) and loading scripts or styles
  from anywhere but the gateway itself, and requests a browser marks as
  cross-site are refused before anything runs.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.config import HttpSettings

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; manifest-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class ControlRefusedError(Exception):
    """A changing request that may not run: its HTTP status and why."""

    def __init__(self, status: int, reason: str) -> None:
        """Keep the status for the answer."""
        super().__init__(reason)
        self.status = status


class Guard:
    """Decides whether a request may change something."""

    def __init__(self, settings: HttpSettings) -> None:
        """Read-only unless ``settings.token`` is set; warn when that is reachable from afar."""
        self._token = None if settings.token is None else settings.token.get_secret_value()
        if self._token is None and not is_loopback(settings.host):
            log.warning(
                "HTTP: the dashboard on %s is read-only: set http.token (or http.token_file) "
                "to allow control from it",
                settings.host,
            )

    @property
    def control(self) -> bool:
        """Whether commands may be sent at all (a token is set)."""
        return self._token is not None

    def check(self, request: web.Request) -> None:
        """Refuse a changing request unless it comes with the token, from this site.

        Raises:
            ControlRefusedError: 403 read-only or cross-site, 401 without the right
                token, 415 for a body that is not JSON.
        """
        if self._token is None:
            raise ControlRefusedError(
                403, "the dashboard is read-only: set http.token to allow control"
            )
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in {"same-origin", "none"}:
            raise ControlRefusedError(403, "cross-site requests may not change anything")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self._token.encode()
        ):
            raise ControlRefusedError(401, "a valid token is needed (Authorization: Bearer ...)")
        if request.content_type != "application/json":
            raise ControlRefusedError(415, "send the command as application/json")


async def add_security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    """Every answer, errors and event streams included (``on_response_prepare``)."""
    response.headers.update(SECURITY_HEADERS)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) reaches only this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything
