"""Draw many recipes x interruptions and check that each interrupted run ends as the uninterrupted one
(see tests/restart_cases.py).

    python scripts/restart_fuzz.py --draws=50 [--start=0] [--engine=keras]

Each draw is reproducible from its seed. Prints one line per violation and a closing 'N passed, M failed'
count of draws; exits 1 if any draw broke the property.
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

import restart_cases  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=50)
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--engine", choices=("estimator", "keras"), help="--engine of every draw (default: the "
                        "trainer's default)")
    parser.add_argument("--keep", help="keep each draw's folders under this directory (default: a temporary one)")
    args = parser.parse_args()
    failed, kinds = 0, {}
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        for seed in range(args.start, args.start + args.draws):
            t = time.time()
            problems = restart_cases.run_case(seed, root / str(seed), args.engine)
            case = restart_cases.draw(seed, root / str(seed), args.engine)
            kinds[case["kind"]] = kinds.get(case["kind"], 0) + 1
            for problem in problems:
                print(problem, flush=True)
            print(f"seed {seed}: {'FAILED' if problems else 'ok'} in {time.time() - t:.0f} s "
                  f"({case['kind']}, {len(case['interruptions'])} interruption(s))", file=sys.stderr, flush=True)
            failed += bool(problems)
    print(f"{args.draws} draws in {time.time() - started:.0f} s; kinds: {kinds}", file=sys.stderr)
    print(f"{args.draws - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
