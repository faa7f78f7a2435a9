"""Static analysis for security (ruff's flake8-bandit rules, `S`) over the code that runs in
production: clean, or each finding justified where it is, with a `# noqa: Sxxx  <why>`."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = ("webapp", "worker", "scheduler")


def test_security_rules_find_nothing_unjustified():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "S",
                             "--output-format", "concise", *CODE], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, (
        "ruff's security rules found something: fix it, or say why it is safe with "
        "`# noqa: Sxxx  <why>` on that line\n" + result.stdout + result.stderr)


def test_every_security_exemption_says_why():
    bare = []
    for top in CODE:
        for path in sorted((ROOT / top).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                for match in re.finditer(r"#\s*noqa:\s*(S\d+(?:\s*,\s*S\d+)*)(.*)", line):
                    if len(match.group(2).strip()) < 10:
                        bare.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not bare, "a `# noqa: S...` without its reason:\n" + "\n".join(bare)
