"""The CI-sized chaos run: every scenario once against the whole stack as separate
processes (gunicorn, 2 RQ workers, 2 supervisors, redis-server, the records simulator)
on PostgreSQL, with zero invariant violations. The long run: python -m tests.chaos."""
import os
import random

import pytest

from tests.chaos.runner import run, table
from tests.chaos.scenarios import SCENARIOS


def test_every_fault_scenario_keeps_every_invariant():
    if not os.environ.get("SYNCHUB_TEST_POSTGRES_URL"):
        pytest.skip("the chaos suite needs PostgreSQL: SYNCHUB_TEST_POSTGRES_URL is unset")
    seed = int(os.environ.get("SYNCHUB_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"chaos seed {seed} (replay: SYNCHUB_CHAOS_SEED={seed} or python -m tests.chaos --trials 1 --seed {seed})")
    results = run(list(SCENARIOS), 1, seed)
    print(table(results, seed))
    for name, result in results.items():
        assert result["trials"] == 1 and result["faults"] > 0, (name, result)
    violations = [v for r in results.values() for v in r["violations"]]
    assert not violations, f"seed {seed}:\n" + "\n".join(violations)
