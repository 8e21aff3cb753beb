"""Exit 0 when a pytest JUnit XML report counts at least one passed test, else 1 (used by probe_gpu.sh).

pytest exits 0 when every selected test skips (no GPU visible, a missing package): a GPU check
that ran nothing must not pass. Prints ``N passed, S skipped, F failed, E errors``.

    python bench/junit_passed.py results/pytest_gpu.xml
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def counts(path: str) -> dict[str, int]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "skipped", "failures", "errors")}
    total["passed"] = total["tests"] - total["skipped"] - total["failures"] - total["errors"]
    return total


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    try:
        c = counts(argv[0])
    except (OSError, ET.ParseError) as e:
        print(f"no test report: {e}")
        return 1
    print(f"{c['passed']} passed, {c['skipped']} skipped, {c['failures']} failed, {c['errors']} errors")
    if c["passed"] < 1:
        print("no GPU test passed: the check ran nothing")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
