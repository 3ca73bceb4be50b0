"""The ``admmcompress`` command: ``run``, ``eval``, ``sensitivity``, ``export``, ``inspect``,
``report``. Every error it can foresee becomes one message and its exit code (``errors``)."""

from __future__ import annotations

import sys

from .errors import classify
from .parser import COMMANDS, build_parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    from . import commands  # the verbs: imported only once a command is known

    try:
        return commands.HANDLERS[args.command](args)
    except (Exception, KeyboardInterrupt) as e:
        code, message = classify(e)
        print(message, file=sys.stderr)
        return code
