"""Security headers on every response the app sends (errors, 404s, OPTIONS and CORS answers included), and the
Content-Security-Policy, all of it in this one place.

The JSON API may load, run and frame nothing. Each docs page (Litestar's Swagger UI and ReDoc) may load what it
uses: its viewer's code and styles from this service (no CDN), its one inline start-up script (by a nonce made for
each response; see `NoncedDocsPage` in extensions.py), and what its viewer fetches once running.
"""

from __future__ import annotations

from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # for browsers that predate frame-ancestors
}

NOTHING = {"default-src": "'none'"}
NO_FRAMING_NO_FORMS = {"frame-ancestors": "'none'", "base-uri": "'none'", "form-action": "'none'"}

# Each docs page loads its viewer from this service ('self': service/api/docs_assets/) and nothing from elsewhere.
SWAGGER_UI_SOURCES = {
    "script-src": "'self'",
    "style-src": "'self' 'unsafe-inline'",  # its stylesheet; the page's <style> and Swagger UI's own inline styles
    "img-src": "data:",  # its icons are data: URLs in its stylesheet, and so is the page's (empty) icon
    "connect-src": "'self'",  # "Try it out" calls this API
}
REDOC_SOURCES = {
    "script-src": "'self'",
    "style-src": "'unsafe-inline'",  # the page's <style> and the styles ReDoc injects
    "img-src": "data:",
    "worker-src": "blob:",  # its search runs in a worker built from a blob: URL (Redocly/redoc#764)
}

# A docs page's own policy, put in the request's state while the page is rendered.
CSP_STATE_KEY = "content_security_policy"


def policy(directives: dict[str, str]) -> str:
    return "; ".join(f"{name} {sources}" for name, sources in directives.items())


API_POLICY = policy(NOTHING | NO_FRAMING_NO_FORMS)


def docs_page_policy(sources: dict[str, str], nonce: str) -> str:
    """The policy of a docs page whose inline script carries `nonce`."""
    script_src = f"'nonce-{nonce}' {sources['script-src']}"
    return policy(NOTHING | sources | {"script-src": script_src} | NO_FRAMING_NO_FORMS)


async def add_security_headers(message: Message, scope: Scope) -> None:
    """A `before_send` hook: Litestar calls it for every message the app sends, whatever produced the response."""
    if message["type"] != "http.response.start":
        return
    message.setdefault("headers", [])
    headers = MutableScopeHeaders.from_message(message)
    for name, value in SECURITY_HEADERS.items():
        headers[name] = value
    headers["Content-Security-Policy"] = scope.get("state", {}).get(CSP_STATE_KEY, API_POLICY)
