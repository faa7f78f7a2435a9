"""The supervisor (`python -m scheduler`): time, leadership, sweeps.

It imports webapp and looks only at rows and heartbeats; worker jobs are enqueued by
dotted name, so nothing here imports worker/. See docs/SUPERVISOR.md.
"""
