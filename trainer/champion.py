"""`python -m trainer.champion show|history|rollback|promote --champion_dir=DIR [--to=VERSION] [--model_dir=RUN]`:
the champion folder by hand (what is served, its history, going back, and promoting a run trained with
--promote=false whose gate passed). The store itself: trainer.retrain.champion_store.
"""
import json
import sys

from trainer.errors import UsageError
from trainer.retrain.champion_store import POINTER, network_failure, open_store, read_current, rollback


def main(argv=None) -> int:
    from trainer.errors import ArgumentParser

    parser = ArgumentParser(prog="python -m trainer.champion", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("show", "history", "rollback", "promote"))
    parser.add_argument("--champion_dir", required=True)
    parser.add_argument("--to", default=None, help="rollback: the version to make champion [the previous one]")
    parser.add_argument("--model_dir", default=None, help="promote: the run (trained with --promote=false)")
    args = parser.parse_args(argv)
    try:
        if args.command == "promote":
            if not args.model_dir:
                raise UsageError("promote needs --model_dir: the run trained with --promote=false")
            from trainer.retrain.deferred import promote_gated

            record = promote_gated(args.champion_dir, args.model_dir)
            print(json.dumps({k: record.get(k) for k in ("promoted", "decision", "version", "champion_version",
                                                          "reason")}, sort_keys=True))
            return 0
        store = open_store(args.champion_dir)
        if args.command == "rollback":
            print(json.dumps(rollback(args.champion_dir, args.to), sort_keys=True))
            return 0
        if not store.exists():
            raise UsageError(f"--champion_dir={args.champion_dir} does not exist")
        if args.command == "show":
            pointer = read_current(store, args.champion_dir)
            if pointer is None:
                raise UsageError(f"--champion_dir={args.champion_dir} has no champion yet")
            print(json.dumps(pointer, indent=2, sort_keys=True))
            return 0
        try:
            pointer, _ = store.read_pointer()
        except UsageError as e:  # History is how one picks the version to repair it with: still list.
            sys.stderr.write(f"warning: {e}\n")
            pointer = None
        current = pointer["version"] if pointer else None
        for version in store.versions():
            marker = "*" if version == current else " "
            try:
                shown = json.dumps(store.metrics(version), sort_keys=True)
            except (ValueError, OSError, UnicodeDecodeError) as e:  # One damaged file must not hide the others.
                shown = f"(metrics.json unreadable: {type(e).__name__})"
            print(f"{marker} {version} {shown}")
        return 0
    except UsageError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    except Exception as e:  # A full disk, an unreachable bucket: one line, not a traceback.
        from trainer.errors import disk_failure

        disk, detail = disk_failure(e), network_failure(e)
        if disk:  # Its advice speaks of training checkpoints; here the pointer is what was (not) written.
            what = disk.split(": free space", 1)[0]
            if " writing " not in what and args.command == "rollback":
                what += f" writing {args.champion_dir.rstrip('/')}/{POINTER}"
            message = (f"{what}: free space (or make the folder writable), then run the same command again; "
                       f"{POINTER} is unchanged and no temporary file of this attempt is left")
        elif detail:
            message = (f"--champion_dir={args.champion_dir}: Cloud Storage cannot be reached ({detail}); run the "
                       "command again when it answers (`show` says which version CHAMPION.json names)")
        else:
            raise
        sys.stderr.write(f"error: {message}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
