"""The health page: workers, queues, supervisors, stale runs and open alerts."""
from flask import render_template

from ..health import health_report, readiness
from .blueprint import bp


@bp.route("/health")
def health():
    return render_template("admin/health.html", report=health_report(), checks=readiness())
