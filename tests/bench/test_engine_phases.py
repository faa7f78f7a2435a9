"""bench/engine_phases.py, the profile docs/PERFORMANCE.md cites: every phase it times still
exists under its name and is reached by a real sync."""
import subprocess
import sys

from bench.common import ROOT
from bench.engine_phases import PHASES


def test_every_phase_of_a_small_sync_is_timed():
    out = subprocess.run([sys.executable, "-m", "bench.engine_phases", "--records", "2000", "--runs", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {}
    for line in out.stdout.splitlines()[1:]:
        label, low, _dash, _high = line.rsplit(None, 3)  # "<label>  <min> - <max>"
        rows[label.strip()] = float(low)
    assert rows["the run"] > 0
    # Reached on a first import of a rest stream (the sweep is skipped: nothing was stored before).
    for _, _, label in PHASES:
        assert label.strip() in rows
    assert rows["page write"] > 0 and rows["F a page read and prepared"] > 0
