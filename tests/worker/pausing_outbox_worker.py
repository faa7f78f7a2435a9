"""`python -m tests.worker.pausing_outbox_worker [python -m worker's options]`: a real
worker whose outbox sender waits OUTBOX_TEST_PAUSE_AFTER_SEND_SECONDS (environment) after
the destination accepted an event and before recording it, so a test can SIGKILL it inside
that window (docs/OUTBOX.md, "Sending": such a row is sent again after its lease).

A fault for tests only: the product has no such setting. The pause is patched in before the
worker starts, so every forked work horse inherits it.
"""
import os
import runpy
import sys
import time

from worker.outbox_sender import OutboxSender

PAUSE_VARIABLE = "OUTBOX_TEST_PAUSE_AFTER_SEND_SECONDS"


def _pause_after_each_request(seconds):
    send = OutboxSender._request

    def request_then_pause(self, connector, claimed):
        note = send(self, connector, claimed)
        time.sleep(seconds)  # the destination has the event; our row does not know it yet
        return note

    OutboxSender._request = request_then_pause


if __name__ == "__main__":
    _pause_after_each_request(float(os.environ[PAUSE_VARIABLE]))
    sys.argv[0] = "python -m worker"
    runpy.run_module("worker", run_name="__main__", alter_sys=True)
