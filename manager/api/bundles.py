"""Bundles: upload (verified against the trust root), list, inspect, download with resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO, cast

from flask import Response, jsonify, request, send_file

from satchel.bundles.timeutil import now
from satchel.manager.api import bp
from satchel.manager.api.guard import current_principal, requires
from satchel.manager.context import state
from satchel.manager.errors import InvalidRequestError, RequestTooLargeError
from satchel.manager.services import bundles
from satchel.manager.services.credentials import ADMIN, DEVICE
from satchel.manager.store import SUFFIX, Store

MIMETYPE = "application/vnd.satchel.bundle"


def _upload_stream() -> BinaryIO:
    limit = state().config.max_bundle_bytes
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLargeError(f"bundle is larger than the {limit} byte upload limit")
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("bundle") or next(iter(request.files.values()), None)
        if upload is None:
            raise InvalidRequestError("multipart upload has no file (use the field 'bundle')")
        return cast(BinaryIO, upload.stream)
    return cast(BinaryIO, request.stream)


@bp.post("/bundles")
@requires(ADMIN)
def upload_bundle() -> Response:
    """Upload a .satchel file as the raw body or as multipart field `bundle`."""
    st = state()
    source = _upload_stream()
    t = now()
    # no retry loop: the body can be read only once
    with st.db.transaction() as s:
        added = bundles.add(s, st.store, source, t, st.config.max_bundle_bytes)
        out = bundles.detail(added.bundle)
    created = added.created
    out["created"] = created
    response = jsonify(out)
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/api/v1/bundles/{out['sha256']}"
    return response


@bp.get("/bundles")
@requires(ADMIN)
def list_bundles() -> Response:
    name = request.args.get("name")
    out = state().db.run(
        lambda s: {"bundles": [bundles.summary(b) for b in bundles.list_bundles(s, name)]}
    )
    return jsonify(out)


def _visible(s: Any, sha256: str) -> Any:
    bundle = bundles.get_by_sha(s, sha256)
    principal = current_principal()
    if not principal.is_admin:
        bundles.check_device_may_fetch(s, principal.device_id or "", bundle)
    return bundle


@bp.get("/bundles/<sha256>")
@requires(ADMIN, DEVICE)
def show_bundle(sha256: str) -> Response:
    return jsonify(state().db.run(lambda s: bundles.detail(_visible(s, sha256))))


@bp.delete("/bundles/<sha256>")
@requires(ADMIN)
def remove_bundle(sha256: str) -> Response:
    """Forget a bundle no deployment refers to and delete its file from the store; answers
    its summary. The path may also name it NAME:VERSION or by a unique prefix (8+ hex)."""
    st = state()
    removed = st.db.run(lambda s: bundles.remove(s, bundles.get_by_ref(s, sha256)))
    st.store.delete(removed["sha256"])  # after the commit: see bundles.remove
    return jsonify(removed)


@bp.get("/bundles/<sha256>/download")
@requires(ADMIN, DEVICE)
def download_bundle(sha256: str) -> Response:
    """The bundle file; ETag is its sha256; Range, If-Range and If-None-Match are honoured.

    With `store_presign` and an object store, a device is answered 302 to a short-lived
    pre-signed URL of the store instead (its check-in offers name that origin); admins are
    always served here, so their token never follows a redirect.
    """
    st = state()
    size = st.db.run(lambda s: _visible(s, sha256).size)
    st.metrics.inc("satchel_bundle_downloads_total")
    if st.config.store_presign and not current_principal().is_admin:
        url = st.store.presigned_url(sha256, st.config.store_presign_ttl_s)
        if url is not None:
            return _redirect(url)
    path = st.store.local_path(sha256)
    if path is not None:
        return _download_response(path, sha256, st.config.download_max_age_s)
    return _proxied_response(st.store, sha256, size, st.config.download_max_age_s)


def _redirect(url: str) -> Response:
    response = Response(status=302)
    response.headers["Location"] = url
    response.headers["Cache-Control"] = "no-store"  # the URL expires; never reuse it
    return response


def _download_response(path: Path, sha256: str, max_age_s: int) -> Response:
    """Serve a stored bundle: strong ETag = its sha256, 304 on a matching If-None-Match,
    206 for one satisfiable Range (honouring If-Range), 416 for an unsatisfiable one."""
    response = send_file(
        path.resolve(),  # Flask resolves a relative path against the app, not the cwd
        mimetype=MIMETYPE,
        as_attachment=True,
        download_name=f"{sha256}{SUFFIX}",
        conditional=True,
        etag=sha256,
        max_age=max_age_s,
    )
    response.headers["Accept-Ranges"] = "bytes"
    return response


def _proxied_response(store: Store, sha256: str, size: int, max_age_s: int) -> Response:
    """A bundle from an object store, streamed through the manager, with the folder's
    answers: the same ETag, 304, 206 (one range, If-Range by the sha256 ETag) and 416. Only
    the bytes asked for are read from the store, so a resume costs what it fetches."""
    headers = {
        "ETag": f'"{sha256}"',
        "Accept-Ranges": "bytes",
        "Cache-Control": f"public, max-age={max_age_s}",
        "Content-Disposition": f"attachment; filename={sha256}{SUFFIX}",
    }
    if request.if_none_match.contains_weak(sha256):
        return Response(status=304, headers=headers)
    start, stop, status = 0, size, 200
    wanted = request.range
    if_range = request.if_range
    # If-Range by anything but our strong ETag (a date, another file) asks for the whole file
    honoured = not (if_range.date or if_range.etag) or if_range.etag == sha256
    if request.headers.get("Range") and honoured:
        span = wanted.range_for_length(size) if wanted is not None else None
        if span is None:
            headers["Content-Range"] = f"bytes */{size}"
            return Response(status=416, headers=headers)
        (start, stop), status = span, 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    headers["Content-Length"] = str(stop - start)
    body = store.read_range(sha256, start, stop) if request.method != "HEAD" else iter(())
    return Response(body, status=status, mimetype=MIMETYPE, headers=headers,
                    direct_passthrough=True)
