"""The reviewers' web page: one HTML page, a small script and a stylesheet (no build step).

The page holds no data and the server keeps no session for it: the reviewer pastes an API
key, which the script keeps in the tab's ``sessionStorage`` and sends as ``Authorization:
Bearer`` to the ``/v1/review`` API. Tenant scoping and roles are therefore enforced by the
same middleware as for any API client; the page itself is public, like ``/healthz``.

The files ship inside the package (``loopwright/gateway/static``, package data), so the page
works offline: no CDN, nothing fetched from elsewhere (the Content-Security-Policy says so).
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import Response

from loopwright.gateway.review import REVIEW_LABELS

STATIC = Path(__file__).with_name("static")
PAGE_PATH = "/review"
_ASSETS = {
    "review.js": "text/javascript; charset=utf-8",
    "review.css": "text/css; charset=utf-8",
}
# Only this origin's script, style and API; no inline code, no framing.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def render_page() -> str:
    """The page's HTML with the queue's labels in it (the script builds the choices)."""
    page = (STATIC / "review.html").read_text(encoding="utf-8")
    return page.replace("__LABELS__", html.escape(" ".join(REVIEW_LABELS)))


def add_review_ui(app: FastAPI) -> None:
    """Serve the review page at ``/review`` and its assets under ``/review/static/``.

    The files are read once, here (when the app is built), not at import time.
    """
    page = render_page().encode("utf-8")
    assets = {name: (STATIC / name).read_bytes() for name in _ASSETS}

    @app.get(PAGE_PATH, include_in_schema=False)
    async def review_page() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=_HEADERS)

    @app.get(PAGE_PATH + "/static/{name}", include_in_schema=False)
    async def review_asset(name: str) -> Response:
        if name not in assets:
            return Response(b"not found", status_code=404, media_type="text/plain")
        return Response(assets[name], media_type=_ASSETS[name], headers=_HEADERS)
