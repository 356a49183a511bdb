"""The review page at `/`: static HTML, CSS and JavaScript shipped in the package (no build step, no CDN), so
it works offline and from the serve image as is.

Only these exact paths are public (the middleware's allow-list); the page itself holds no data and calls the
keyed API from the browser with the key the reviewer types (kept in sessionStorage, never in a URL). Every
page response carries a strict Content-Security-Policy: scripts, styles and connections from this origin
only, no inline script or style, images from this origin or the photo's own blob: URL, no framing.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from photo_detector.errors import PhotoDetectorError

# path -> (file under serving/static, media type)
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/review.css": ("review.css", "text/css; charset=utf-8"),
    "/static/review.js": ("review.js", "text/javascript; charset=utf-8"),
}
PUBLIC = frozenset(FILES)

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-cache",  # revalidate: a new serve image must not run an old script against its API
}


def _read(name: str) -> bytes:
    try:
        return (resources.files("photo_detector.serving") / "static" / name).read_bytes()
    except FileNotFoundError:
        raise PhotoDetectorError(f"the review page's file serving/static/{name} is not installed",
                                 "reinstall photo-detector from a wheel built by `pip wheel .` (it ships "
                                 "serving/static/ as package data)") from None


def routes() -> list[Route]:
    """One GET route per page file, its bytes read once here (a missing file fails the start, not a visit)."""
    out = []
    for path, (name, media_type) in FILES.items():
        body = _read(name)

        async def endpoint(request: Request, body: bytes = body, media_type: str = media_type) -> Response:
            return Response(body, media_type=media_type, headers=HEADERS)

        out.append(Route(path, endpoint, methods=["GET"]))
    return out
