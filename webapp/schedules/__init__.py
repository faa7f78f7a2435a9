"""Connection schedules, in four modules:

    parser.py   the schedule language: parse a schedule string, compute its slots. No
                database and no Flask, so models, forms and CLIs can use it freely.
    firing.py   keep each connection's next_run_at true to its schedule, and turn the
                slots that are due into runs (the supervisor and the cron endpoint).
    batches.py  fire due slots a few hundred per transaction.
    slot.py     one due slot, its outcome, and firing it on its own (runs.trigger).

Nothing is imported here, so importing the parser never loads the firing code.
"""
