"""The settings table (webapp/config.py) is the one place a default is stated, and
docs/DEPLOY.md shows all of it."""
import os
import re

from webapp.config import SETTINGS, Config, defaults, markdown_table

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _code_files():
    for top in ("webapp", "worker", "scheduler"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    yield os.path.join(folder, name)


def test_deploy_doc_shows_the_table_of_every_setting():
    with open(os.path.join(ROOT, "docs", "DEPLOY.md")) as f:
        doc = f.read()
    assert markdown_table() in doc, "docs/DEPLOY.md is out of date: paste `python -m webapp.config` into it"


def test_each_setting_is_read_from_its_environment_variable():
    shaped = {"SYNCHUB_ALLOW_PRIVATE_URLS": "10.0.0.0/8"}  # values that must have a shape
    environ = {s.env: shaped.get(s.env, "7") for s in SETTINGS}
    values = Config("/tmp/instance", environ=environ).as_dict()
    for s in SETTINGS:
        assert values[s.key] == s.parse(environ[s.env]), s.env


def test_retention_windows_default_to_the_common_one():
    values = Config("/tmp/instance", environ={"SYNCHUB_RETENTION_DAYS": "9", "SYNCHUB_RETENTION_RUNS_DAYS": "2"}).as_dict()
    assert values["RETENTION_RUNS_DAYS"] == 2
    assert values["RETENTION_OUTBOX_EVENTS_DAYS"] == values["RETENTION_RUN_EVENTS_DAYS"] == 9


def test_secure_cookies_can_be_turned_off_in_plain_words():
    for text, expected in (("0", False), ("false", False), ("No", False), ("1", True), ("yes", True)):
        assert Config("/tmp/i", environ={"SYNCHUB_SECURE_COOKIES": text}).as_dict()["SESSION_COOKIE_SECURE"] is expected


def test_no_code_restates_a_default_or_reads_a_synchub_variable_itself():
    """`config.get("KEY", default)` would state a second default that drifts from the table;
    an environment variable read outside webapp/config.py would be a knob the table misses."""
    keys = {s.key for s in SETTINGS}
    offenders = []
    for path in _code_files():
        if path.endswith(os.path.join("webapp", "config.py")):
            continue
        with open(path) as f:
            text = f.read()
        for key in re.findall(r"""config\.get\(\s*["']([A-Z0-9_]+)["']\s*,""", text):
            if key in keys:
                offenders.append(f"{os.path.relpath(path, ROOT)}: config.get({key!r}, ...)")
        for name in re.findall(r"""environ(?:\.get)?[\[(]\s*["'](SYNCHUB_[A-Z0-9_]+)""", text):
            if name not in ("SYNCHUB_INSTANCE_PATH", "SYNCHUB_CLOCK_FILE"):
                offenders.append(f"{os.path.relpath(path, ROOT)}: reads {name}")
    assert not offenders, "\n".join(offenders)


def test_defaults_are_a_fresh_copy():
    first = defaults()
    first["HTTP_MAX_RETRIES"] = -1
    assert defaults()["HTTP_MAX_RETRIES"] == 5
