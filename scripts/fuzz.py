"""Draw many newcomer-style runs and check the trainer's contract on each (see tests/fuzz_cases.py).

    python scripts/fuzz.py --draws=200 [--start=0]

Each draw is reproducible from its seed. Prints one line per violation and a closing
'N passed, M failed' count of draws; exits 1 if any draw broke the contract.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import fuzz_cases  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--start", type=int, default=0, help="first seed")
    args = parser.parse_args()
    failed, outcomes = 0, {"exit 0": 0, "exit 1": 0}
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.start, args.start + args.draws):
            problems = fuzz_cases.run_case(seed, Path(tmp) / str(seed))
            outcomes["exit 0" if (Path(tmp) / str(seed) / "run" / "eval_metrics.json").exists() else "exit 1"] += 1
            for problem in problems:
                print(problem, flush=True)
            failed += bool(problems)
    print(f"{args.draws} draws in {time.time() - started:.0f} s; outcomes: {outcomes}", file=sys.stderr)
    print(f"{args.draws - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
