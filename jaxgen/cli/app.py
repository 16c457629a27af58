"""Command line: ``jaxgen generate | score | convert | crosscheck | bench``.

Every failure a user can cause (a bad flag value, a missing folder, a folder without the tokenizer that text needs,
a prompts file that does not parse, a model that cannot be loaded) prints one ``error: ...`` line on stderr and
exits with status 2, without a traceback; anything unexpected (an OSError, an XLA RuntimeError...) does too, named
by its type (set ``JAXGEN_TRACEBACK=1`` to see the traceback). ``crosscheck`` exits with 1 when it finds a
mismatch; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from jaxgen.cli import bench
from jaxgen.cli import crosscheck, generate, score
from jaxgen.cli.common import Parser, UserError, generation_flags, overrides  # noqa: F401  (re-exported)
from jaxgen.errors import JaxgenError


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="jaxgen", description="LLM generation in JAX with transformers parity.")
    sub = parser.add_subparsers(dest="command", metavar="{generate,score,convert,crosscheck,bench}",
                                parser_class=Parser)
    sub.required = True
    generate.add_parser(sub)
    score.add_parser(sub)
    sub.add_parser("convert", help="convert a Hugging Face checkpoint (HF_DIR OUT_DIR [--dtype D] [--quiet])",
                   add_help=False)
    crosscheck.add_parser(sub)
    bench.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``jaxgen``; returns the exit status (0 ok, 1 crosscheck mismatch, 2 error, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except SystemExit as e:  # --help (0) or an argparse error (2, already printed)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`jaxgen generate ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:
        if os.environ.get("JAXGEN_TRACEBACK"):
            raise
        _flush_quietly()
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2


def _run(argv: list[str]) -> int:
    if argv and argv[0] == "convert":
        from checkpoints_convert.cli import main as convert_main

        return convert_main(argv[1:], prog="jaxgen convert")
    args = build_parser().parse_args(argv)
    enable_compilation_cache()
    return args.run(args)


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache, so a second ``jaxgen generate`` reuses the programs the first
    compiled (seconds of start-up on small machines). Folder: ``$JAXGEN_COMPILATION_CACHE``, else
    ``$XDG_CACHE_HOME/jaxgen/xla`` (``~/.cache/jaxgen/xla``); ``JAXGEN_COMPILATION_CACHE=off`` disables it, and a
    cache folder the user already gave JAX (``JAX_COMPILATION_CACHE_DIR``) is left as it is."""
    import jax

    setting = os.environ.get("JAXGEN_COMPILATION_CACHE", "")
    if setting.lower() in ("off", "0", "false", "no") or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    folder = setting or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                     "jaxgen", "xla")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:  # an unwritable home: run without the cache rather than fail
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    # The CLI's programs compile in seconds each; cache them all (JAX's default skips those under 1 s).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


# Errors whose message is written for the user; anything else is also named by its type.
_EXPECTED = (UserError, JaxgenError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError)


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    if isinstance(e, _EXPECTED) and text:
        return " ".join(text.split())
    # XLA and other libraries put pages of detail after the first line; the traceback variable brings them back.
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if len(first) > 500:
        first = first[:497] + "..."
    return f"{type(e).__name__}: {first or '(no message)'} (set JAXGEN_TRACEBACK=1 for the traceback)"


def _flush_quietly() -> None:
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
