"""The soak: the chaos stack under an hour of mixed load and random faults (docs/RELIABILITY.md)."""
