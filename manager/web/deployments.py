"""Deployments: the list and the form that starts one, one deployment's waves and devices,
and pause / resume / abort, all through `manager.services.deployments`."""

from __future__ import annotations

from typing import Any

from flask import abort, render_template, request
from werkzeug.wrappers import Response

from satchel.bundles.timeutil import now
from satchel.manager.context import state
from satchel.manager.errors import ManagerError
from satchel.manager.services import deployments, rewrap
from satchel.manager.services.dashboard.activation import deployment_stages
from satchel.manager.services.dashboard.deployments import deployments_page, wave_line
from satchel.manager.web import bp, forms
from satchel.manager.web.common import done, page_arg, refused, run
from satchel.manager.web.config import web_config

IN_PROGRESS = (
    deployments.ASSIGNED,
    deployments.DOWNLOADED,
    deployments.VERIFIED,
    deployments.ACTIVATED,
)


def _list_page(
    form: dict[str, str] | None = None, error: str | None = None, status: int = 200
) -> Response:
    limit = web_config().deployments_shown
    page = run(lambda s: deployments_page(s, limit))
    cfg = state().config
    defaults = {
        "bundle": request.args.get("bundle", ""),
        "waves": cfg.deploy_default_waves,
        "success_percent": f"{cfg.deploy_success_ratio * 100:g}",
        "max_failure_percent": f"{cfg.deploy_max_failure_ratio * 100:g}",
    }
    html = render_template(
        "deployments.html",
        form={**defaults, **(form or {})},
        error=error,
        deployments=page.deployments,
        total=page.total,
        bundles=page.bundles,
        classes=page.classes,
        tags=page.tags,
    )
    return Response(html, status=status, mimetype="text/html")


@bp.get("/deployments")
def deployment_list() -> Response:
    return _list_page()


@bp.post("/deployments")
def deployment_create() -> Response:
    """Start a deployment from the form; on a refusal, show the form again with the reason."""
    t = now()
    try:
        st = state()
        wanted = forms.deployment_request(request.form, st.config)

        def work(s: Any) -> tuple[int, str | None]:
            dep = deployments.create(s, wanted.bundle, wanted.selectors, wanted.waves,
                                     wanted.success_ratio, wanted.max_failure_ratio, t)
            return dep.id, rewrap.for_deployment(s, st.store, st.config, dep, t)

        dep_id, replaced = run(work)
        if replaced is not None:
            st.store.delete(replaced)  # after the commit (services/rewrap.py)
    except ManagerError as e:
        return _list_page(dict(request.form), str(e), status=400)
    return done(f"Deployment {dep_id} started.", "web.deployment", deployment_id=dep_id)


@bp.get("/deployments/<int:deployment_id>")
def deployment(deployment_id: int) -> str:
    """Waves with progress, the reason it halted, every device's progress (paged)."""
    t = now()
    found = run(lambda s: deployments.status(s, deployment_id, t))
    bundle = found["bundle"]
    stages = run(
        lambda s: deployment_stages(s, bundle["name"], bundle["sequence"], found["targets"])
    )
    size = web_config().page_size
    targets = found["targets"]
    pages = max(1, -(-len(targets) // size))
    page = min(page_arg(), pages)
    return render_template(
        "deployment.html",
        d=found,
        wave_lines=[wave_line(found, w) for w in found["waves"]],
        targets=targets[(page - 1) * size : page * size],
        page=page,
        pages=pages,
        in_progress=IN_PROGRESS,
        stages=stages,
    )


@bp.post("/deployments/<int:deployment_id>/<action>")
def deployment_action(deployment_id: int, action: str) -> Response:
    """Pause, resume or abort (with an optional reason)."""
    if action not in deployments.ACTIONS:
        abort(404)
    t = now()
    try:
        reason = forms.text(request.form, "reason")
        new_state = run(lambda s: deployments.act(s, deployment_id, action, t, reason).state)
    except ManagerError as e:
        return refused(e, "web.deployment", deployment_id=deployment_id)
    return done(
        f"Deployment {deployment_id} is now {new_state}.",
        "web.deployment",
        deployment_id=deployment_id,
    )
