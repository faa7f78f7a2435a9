import os
import sys

# The web server's threads mostly wait on sockets and the database, and a thread woken from
# such a wait queues for the GIL for up to the switch interval (5 ms by default) behind a
# busy one. At 1 ms, webhook latency under load fell (p99 at half the sustained rate 76 ->
# 49 ms, bench/webhook_ingest.py). Only the web process: workers and the supervisor keep 5 ms.
sys.setswitchinterval(float(os.environ.get("SYNCHUB_WEB_SWITCH_INTERVAL", "0.001")))

from webapp import create_app  # noqa: E402

app = create_app()
