"""Template filters for times and numbers. Every timestamp in the database is naive UTC."""
from datetime import datetime, timezone

from ..models import utcnow
from .blueprint import bp


@bp.app_template_filter("utc")
def utc(value):
    if not value:
        return "—"
    return value.strftime("%Y-%m-%d %H:%M:%S") + " UTC"


@bp.app_template_filter("ago")
def ago(value, now=None):
    """'3 min ago' / 'in 5 min' for a naive UTC datetime."""
    if not value:
        return "—"
    seconds = ((now or utcnow()) - value).total_seconds()
    text = duration(abs(seconds))
    return f"{text} ago" if seconds >= 0 else f"in {text}"


@bp.app_template_filter("duration")
def duration(seconds):
    if seconds is None:
        return "—"
    seconds = float(seconds)
    if seconds < 1:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


@bp.app_template_filter("run_duration")
def run_duration(run):
    if not run.started_at:
        return "—"
    end = run.finished_at or utcnow()
    return duration((end - run.started_at).total_seconds())


@bp.app_template_filter("epoch")
def epoch_seconds(value):
    """Seconds since 1970 of a naive UTC datetime, for times the page keeps up to date (ago.js)."""
    return int(value.replace(tzinfo=timezone.utc).timestamp()) if value else ""


@bp.app_template_filter("epoch_utc")
def epoch_utc(value):
    if not value:
        return ""
    return datetime.fromtimestamp(float(value), timezone.utc).strftime("%H:%M:%S")
