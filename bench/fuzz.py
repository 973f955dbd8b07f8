"""Benchmark: the fuzz tests (tests/test_fuzz_*.py) far past CI's count, under hypothesis's `bench`
profile (10,000 mutated inputs per test; tests/conftest.py), printing per test the inputs tried
and the uncaught exceptions, and the outcome mix the reader fuzz tests record.

    python bench/fuzz.py                      # every tests/test_fuzz_*.py
    python bench/fuzz.py -k obo               # a selection, as pytest -k

Target (issue 19): >= 10,000 inputs per reader, 0 uncaught exceptions. An uncaught exception (or a
wrong output a test can judge) fails its test: hypothesis then shrinks it to a minimal input and
pytest prints it. Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# One test's block in --hypothesis-show-statistics output.
_TEST = re.compile(r"^(\S+::\S+):$")
_PHASE = re.compile(r"- during (\w+) phase")
_COUNTS = re.compile(r"- (\d+) passing examples?, (\d+) failing examples?, (\d+) invalid examples?")


def statistics(output: str) -> dict[str, dict[str, int]]:
    """{test: {"tried": inputs run before any shrinking, "failing": those that failed (an uncaught
    exception or a wrong output the test judged), "shrunk": inputs tried while shrinking a failure}}."""
    stats, test, phase = {}, None, None
    for line in output.splitlines():
        if match := _TEST.match(line.strip()):
            test = match[1]
            stats[test] = {"tried": 0, "failing": 0, "shrunk": 0}
        elif match := _PHASE.search(line):
            phase = match[1]
        elif test and (match := _COUNTS.search(line)):
            passing, failing, _ = map(int, match.groups())
            if phase == "shrink":
                stats[test]["shrunk"] += passing + failing
            else:
                stats[test]["tried"] += passing + failing
                stats[test]["failing"] += failing
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", help="pytest -k expression selecting tests")
    args = parser.parse_args()
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_fuzz_*.py"))
    if not files:
        print("no tests/test_fuzz_*.py", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        outcomes_file = Path(tmp) / "outcomes.json"
        env = {**os.environ, "HYPOTHESIS_PROFILE": "bench", "ANGEL_FUZZ_STATS": str(outcomes_file)}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--hypothesis-show-statistics",
                   "-W", "ignore::DeprecationWarning", *files, *(["-k", args.k] if args.k else [])]
        print("$ HYPOTHESIS_PROFILE=bench python " + " ".join(command[1:]), flush=True)
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        outcomes = json.loads(outcomes_file.read_text()) if outcomes_file.exists() else {}
    failed = set(re.findall(r"^FAILED (\S+::\S+)", done.stdout, re.M))
    print(done.stdout[-6000:] if failed or done.returncode else done.stdout.splitlines()[-1])
    print(f"\n{'test':<44} {'inputs':>7} {'failing':>8}  outcomes of the inputs (error mode, skip mode)")
    for test, s in statistics(done.stdout).items():
        reader = test.split("::")[1].removeprefix("test_").removesuffix("_reader")
        mix = ", ".join(f"{k} {v}" for k, v in outcomes.get(reader, {}).items())
        failing = max(s["failing"], test in failed)
        shrunk = f" (+{s['shrunk']} shrinking)" if s["shrunk"] else ""
        print(f"{test.split('/')[-1]:<44} {s['tried']:>7} {failing:>8}  {mix}{shrunk}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
