"""Run scenarios against one stack and collect the table: scenario, trials, faults
injected, invariant violations, time to recover."""
import random
import statistics
import time
import traceback

from .harness import Stack
from .invariants import ActiveRunSampler, check_all
from .scenarios import SCENARIOS, connections


def run(scenarios, trials, seed, log=print, stack_factory=Stack):
    """Returns {scenario: {"trials", "faults", "violations": [..], "recover": [seconds]}}."""
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise ValueError(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    rng = random.Random(seed)
    results = {name: {"trials": 0, "faults": 0, "violations": [], "recover": []} for name in scenarios}
    stack = stack_factory().start(connections)
    try:
        for trial in range(trials):
            for name in scenarios:
                trial_seed = rng.randrange(2**32)
                started = time.monotonic()
                with ActiveRunSampler(stack) as sampler:
                    try:
                        result = SCENARIOS[name](stack, random.Random(trial_seed))
                    except Exception:
                        result = {"faults": 0, "violations": [f"scenario raised:\n{traceback.format_exc()}"]}
                    violations = check_all(stack, sampler, result)
                entry = results[name]
                entry["trials"] += 1
                entry["faults"] += result.get("faults", 0)
                if "recover" in result:
                    entry["recover"].append(result["recover"])
                entry["violations"] += [f"trial {trial} (seed {trial_seed}): {v}" for v in violations]
                log(f"{name:20s} trial {trial + 1}/{trials} seed {trial_seed}: {result.get('faults', 0)} faults, "
                    f"{len(violations)} violations, {time.monotonic() - started:.1f}s"
                    + "".join(f"\n    {v}" for v in violations))
    finally:
        stack.stop()
    return results


def table(results, seed):
    lines = [f"seed {seed}", "",
             "| scenario | trials | faults injected | invariant violations | time to recover (median / max) |",
             "|---|---:|---:|---:|---|"]
    for name, r in results.items():
        recover = (f"{statistics.median(r['recover']):.1f} s / {max(r['recover']):.1f} s"
                   if r["recover"] else "-")
        lines.append(f"| {name} | {r['trials']} | {r['faults']} | {len(r['violations'])} | {recover} |")
    return "\n".join(lines)
