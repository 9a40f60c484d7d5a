"""The API reference page at /api/v1/docs: Swagger UI rendering /api/v1/openapi.json.

Served by the manager itself, with no credentials, like the document it renders. The renderer
is vendored (manager/static/third-party/swagger-ui, its README says from where), and the page's
Content-Security-Policy lets it load scripts, styles and data from the manager only: it works
with no internet and asks nothing of another origin (no CDN, no online validator).
"""

from __future__ import annotations

from flask import Response, render_template, url_for

from satchel.manager.api import bp

VENDOR = "third-party/swagger-ui"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


@bp.get("/docs")
def api_reference() -> Response:
    """The reference page (HTML); the browser then loads the vendored renderer and the
    document from this manager."""
    html = render_template(
        "api_reference.html",
        spec_url=url_for("api.openapi_document"),
        css=url_for("web.static", filename=f"{VENDOR}/swagger-ui.css"),
        bundle=url_for("web.static", filename=f"{VENDOR}/swagger-ui-bundle.js"),
        start=url_for("web.static", filename="api-reference.js"),
    )
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
