"""Exceptions in words. What people read (run errors, pages, CLI and API answers) names what
went wrong, never a Python exception class; the class goes to the log with the traceback."""

# Run error classes (retry_policy.RunVerdict.error_class, recovery's worker_lost) as words.
RUN_ERROR_WORDS = {
    "auth": "the provider refused the credentials",
    "config": "a setting needs fixing",
    "rate_limited": "rate limited by the provider",
    "transient": "the provider was unreachable or failing",
    "internal": "an unexpected error",
    "worker_lost": "the worker stopped",
}


def run_error_words(error_class):
    return RUN_ERROR_WORDS.get(error_class, (error_class or "").replace("_", " "))


def describe(exc):
    """A short phrase for what an exception means to a person, e.g. "the connection timed out"."""
    import requests
    from redis import exceptions as redis_errors
    from sqlalchemy.exc import OperationalError, SQLAlchemyError

    for kind, words in (
        (requests.exceptions.SSLError, "the secure connection (TLS) failed"),
        (requests.exceptions.ConnectTimeout, "the connection timed out"),
        (requests.exceptions.Timeout, "no answer came in time"),
        (requests.exceptions.ProxyError, "the proxy refused the connection"),
        (requests.exceptions.ConnectionError, "the connection failed (refused, reset or no route to the host)"),
        ((requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema),
         "the address is not a valid URL"),
        (requests.exceptions.TooManyRedirects, "too many redirects"),
        (requests.RequestException, "the request failed"),
        (redis_errors.TimeoutError, "Redis did not answer in time"),
        (redis_errors.ConnectionError, "Redis is unreachable"),
        (redis_errors.RedisError, "Redis answered with an error"),
        (OperationalError, "the database is unreachable or refused the statement"),
        (SQLAlchemyError, "a database error"),
        (TimeoutError, "no answer came in time"),
        (ConnectionError, "the connection failed"),
        (OSError, "a system error (file or network)"),
        (KeyError, "a field that was expected is missing"),
        ((ValueError, TypeError), "a value has an unexpected form"),
    ):
        if isinstance(exc, kind):
            return words
    return "an unexpected error"


def internal_error_message(run_id, exc):
    """The error_message of a run that failed on a bug: for the person reading the run page."""
    return (f"The run stopped on an unexpected error ({describe(exc)}) in the connector or the sync engine; "
            f"the worker log has the details (search for run {run_id}).")
