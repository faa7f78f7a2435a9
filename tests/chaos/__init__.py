"""End-to-end fault injection: the whole stack as separate OS processes, faults injected,
invariants checked against the database and the simulators (docs/RELIABILITY.md)."""
