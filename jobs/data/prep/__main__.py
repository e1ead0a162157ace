"""python -m jobs.data.prep run --job-dir DIR | count --job-dir DIR | classifiers [--check]

`run` prepares a recipe version from DIR/prep.json, `count` counts one source from DIR/count.json
(docs/run-config.md, "Data preparation"); `classifiers` rebuilds the shipped classifiers from their sample.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["classifiers"]:
        from jobs.data.prep.classifiers import main as classifiers_main

        return classifiers_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m jobs.data.prep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("command", choices=("run", "count", "classifiers"))
    parser.add_argument("--job-dir", required=True, type=Path, help="the job's folder (holds prep.json or count.json)")
    args = parser.parse_args(argv)
    job_dir = args.job_dir.resolve()
    from jobs.data.prep.spec import SpecError, load_count, load_prep

    try:
        spec = load_prep(job_dir) if args.command == "run" else load_count(job_dir)
    except SpecError as exc:
        print(f"prep: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "run":
        from jobs.common.tmpdir import ensure_socket_safe_tmpdir
        from jobs.data.prep.driver import run

        ensure_socket_safe_tmpdir()  # the stage pools listen on Unix sockets under it

        return run(spec)  # type: ignore[arg-type]
    from jobs.data.prep.count import run as count_run

    return count_run(spec, job_dir)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
