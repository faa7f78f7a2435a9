"""gunicorn's settings for the web process: `gunicorn -c gunicorn.conf.py wsgi:app` (the
Procfile; bench/webhook_ingest.py serves with it too). Command-line flags override them."""
import os
import sys

bind = f"{os.environ.get('SYNCHUB_BIND', '127.0.0.1')}:{os.environ.get('PORT', '5000')}"
# Requests mostly wait on sockets and the database: threads, in two processes for the GIL.
worker_class = "gthread"
workers = 2
threads = 64


def post_fork(server, worker):
    # A thread woken from a wait on a socket or the database queues for the GIL for up to
    # the switch interval (5 ms by default) behind a busy one; 1 ms lowers webhook latency
    # under load (docs/PERFORMANCE.md). Only the web process: workers and the supervisor
    # keep 5 ms.
    sys.setswitchinterval(float(os.environ.get("SYNCHUB_WEB_SWITCH_INTERVAL", "0.001")))
