"""Execution: RQ job entry points and the code that carries a run out."""
