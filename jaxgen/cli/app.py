"""Command line: ``jaxgen generate | score | convert | crosscheck``.

User mistakes (a bad flag value, a missing folder, a folder without the tokenizer that text needs, a prompts file
that does not parse, a model that cannot be loaded) print ``error: ...`` on stderr and exit with status 2, without
a traceback (set ``JAXGEN_TRACEBACK=1`` to see one). ``crosscheck`` exits with 1 when it finds a mismatch.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from jaxgen.cli import crosscheck, generate, score
from jaxgen.cli.common import Parser, UserError, generation_flags, overrides  # noqa: F401  (re-exported)
from jaxgen.errors import JaxgenError


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="jaxgen", description="LLM generation in JAX with transformers parity.")
    sub = parser.add_subparsers(dest="command", metavar="{generate,score,convert,crosscheck}", parser_class=Parser)
    sub.required = True
    generate.add_parser(sub)
    score.add_parser(sub)
    sub.add_parser("convert", help="convert a Hugging Face checkpoint (HF_DIR OUT_DIR [--dtype D] [--quiet])",
                   add_help=False)
    crosscheck.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``jaxgen``; returns the exit status (0 ok, 1 crosscheck mismatch, 2 user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "convert":
        from checkpoints_convert.cli import main as convert_main

        try:
            return convert_main(argv[1:])
        except SystemExit as e:
            return int(e.code or 0)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or an argparse error (2, already printed)
        return int(e.code or 0)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`jaxgen generate ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (UserError, JaxgenError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        if os.environ.get("JAXGEN_TRACEBACK"):
            raise
        sys.stdout.flush()
        print(f"error: {e}", file=sys.stderr)
        return 2
