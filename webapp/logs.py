"""Logging for every process: text or JSON lines (SYNCHUB_LOG_FORMAT=json), each carrying
the run it concerns (run id, connection, trigger, attempt, RQ job id) so one run can be
followed across web, worker and supervisor, and every line passed through a redactor.

Redaction works on the final text of a line (message, arguments and traceback alike), so
a secret cannot slip through inside an exception message, a URL or a provider's error
body: credential values are registered when they are decrypted, and URL parameters,
Authorization headers and key-value pairs named like secrets are masked by pattern.
"""
import contextlib
import contextvars
import json
import logging
import re
import sys
import threading
import time

REDACTED = "[redacted]"
_context = contextvars.ContextVar("synchub_log_context", default={})
_secrets = set()
_secrets_lock = threading.Lock()
_MIN_SECRET_LENGTH = 6  # shorter values would mask ordinary words

_PATTERNS = [
    # key=value in URLs, forms and logs: ?api_key=..., &token=..., password=...
    (re.compile(r"(?i)((?:api[_-]?key|access[_-]?token|refresh[_-]?token|token|secret|client[_-]?secret|password|passwd|signature|sig|auth)=)[^&\s\"',;]+"), r"\1" + REDACTED),
    # "key": "value" in JSON bodies
    (re.compile(r"(?i)(\"(?:api[_-]?key|access[_-]?token|refresh[_-]?token|token|secret|client[_-]?secret|password|authorization)\"\s*:\s*\")[^\"]*"), r"\1" + REDACTED),
    # Authorization headers and bare bearer tokens
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 " + REDACTED),
    # user:password@ in URLs
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^:/\s@]+:)[^@\s/]+@"), r"\1" + REDACTED + "@"),
]


def register_secret(value):
    """Remember a secret value so it is masked wherever it appears in a log line."""
    if isinstance(value, str) and len(value) >= _MIN_SECRET_LENGTH:
        with _secrets_lock:
            _secrets.add(value)


def register_secrets(mapping):
    for value in (mapping or {}).values():
        if isinstance(value, dict):
            register_secrets(value)
        else:
            register_secret(value)


def redact(text):
    if not text:
        return text
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


@contextlib.contextmanager
def log_context(**fields):
    """Attach fields (run_id, connection, trigger, attempt, rq_job_id, ...) to every line
    logged inside the block, in this thread or task."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def current_context():
    return dict(_context.get())


class _ContextFilter(logging.Filter):
    def filter(self, record):
        record.synchub = current_context()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record):
        line = super().format(record)
        context = getattr(record, "synchub", None)
        if context:
            line += " [" + " ".join(f"{k}={v}" for k, v in context.items()) + "]"
        return redact(line)


class JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "synchub", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # Redact each text before encoding (JSON escaping would hide quoted secrets from the
        # patterns), then the encoded line once more for anything split across fields.
        entry = {k: redact(v) if isinstance(v, str) else v for k, v in entry.items()}
        return redact(json.dumps(entry, default=str))


def configure(level="INFO", fmt="text"):
    """Install one stderr handler on the root logger (and RQ's loggers, which otherwise add
    their own). Idempotent: calling it again replaces the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter())
    handler.set_name("synchub")
    for name in ("", "rq.worker", "rq.scheduler"):
        logger = logging.getLogger(name)
        for existing in list(logger.handlers):
            if existing.get_name() == "synchub" or name:
                logger.removeHandler(existing)
        logger.addHandler(handler)
        if name:
            logger.propagate = False
    logging.getLogger().setLevel(level)
