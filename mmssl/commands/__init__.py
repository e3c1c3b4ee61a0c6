"""The `mmssl` programs. Each module here adds one subcommand to the parser and calls library functions;
the library (`mmssl.data`, `models`, `losses`, `objectives`, `train`, `eval`, ...) never imports argparse.

Run them as `mmssl COMMAND ...`, `python -m mmssl COMMAND ...` or `torchrun ... -m mmssl train RECIPE`.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from mmssl.commands import augment, check, curate, debias, evaluate, finetune, mine, prepare, push, report, sweep, train
from mmssl.errors import MmsslError

COMMANDS = (train, evaluate, finetune, push, mine, augment, report, sweep, prepare, curate, check, debias)
# storage faults reported as one line (full disk, quota, read-only file system, permissions, I/O error)
_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmssl", description="Self-supervised pretraining of text and image-text encoders.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library log messages and full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands).set_defaults(func=command.run)
    return parser


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import datasets

    datasets.disable_progress_bars()
    logging.getLogger("mmssl").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Parse `argv`, run the command; a user error is one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        _quiet_libraries()
    try:
        args.func(args)
    except MmsslError as exc:
        if args.verbose:
            raise
        print(f"mmssl: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if args.verbose or exc.errno not in _STORAGE_ERRORS:
            raise
        where = f" {exc.filename!r}" if exc.filename else ""
        fix = ("free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else
               "write somewhere else" if exc.errno == errno.EROFS else "fix the permissions")
        print(f"mmssl: error: cannot access{where}: {exc.strerror}; {fix}, then run the same command again "
              "(completed checkpoints and earlier outputs are intact)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmssl: interrupted; completed checkpoints are intact (resume with train.resume_from=latest)", file=sys.stderr)
        return 130
    return 0
