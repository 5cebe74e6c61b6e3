"""The ``cvae`` command-line tool (also ``python -m cvae``)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings

from .commands.checks import check_args
from .errors import CvaeError
from .registry import PARTS_VARIABLE, load_plugins


class _Parser(argparse.ArgumentParser):
    """argparse whose errors read like the tool's other errors (one line, what to do), and that takes no
    abbreviated flag: `cvae evaluate RUN --data X` was read as --data-dir X, and the run's own data evaluated."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from .commands import MODULES

    parser = _Parser(prog="cvae", description="Conditional, beta- and plain variational autoencoders: train on "
                     "images, tables or signals, then sample, reconstruct, explore, evaluate.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"cvae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in MODULES:
        importlib.import_module(name).add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    train = sys.modules.get("cvae.train")
    if argv is None and train is not None and train.PROCESS_GROUP_USED:
        # a torchrun process whose run folder is written and whose process group is destroyed: leave
        # now, as gloo's threads can abort the interpreter's finalisation under load
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("CVAE_DEBUG") == "1"
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():  # scoped to the command: the caller's filters come back afterwards
            if not debug:
                warnings.simplefilter("ignore", category=UserWarning)
            from .errors import CvaeWarning

            warnings.simplefilter("always", category=CvaeWarning)
            warnings.showwarning = _show_warning(warnings.showwarning, CvaeWarning)
            if os.environ.get(PARTS_VARIABLE, "").strip():  # its parts first: a clash or a broken file is said now
                load_plugins()
            check_args(args)
            result = args.func(args)
        return int(result or 0)
    except CvaeError as e:
        if debug:
            traceback.print_exc()
        # under torchrun every process meets the same bad input: process 0 says it, in one write (the lines of
        # two processes ran into one another)
        if os.environ.get("RANK", "0") == "0" or os.environ.get("WORLD_SIZE", "1") in ("", "1") or debug:
            sys.stderr.write(f"error: {e}\n")
            sys.stderr.flush()
        return 2
    except KeyboardInterrupt:
        print("interrupted; the run folder keeps the last finished epoch (continue with --resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cvae ... | head`: the reader left; what was written is written (Python's own recipe)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the exit's flush of stdout does not raise again
        return 1
    except MemoryError:
        print("error: out of memory; lower --batch-size or use --limit", file=sys.stderr)
        return 2
    except RuntimeError as e:  # torch's allocators: "can't allocate memory", "CUDA out of memory"
        if not _out_of_memory(e):
            raise
        if debug:
            traceback.print_exc()
        print(f"error: out of memory{_asked(e)}; lower the size: --batch-size, --n, --hidden, --latent-dim or "
              "--image-size (or use a machine with more memory)", file=sys.stderr)
        return 2


def _show_warning(show, own: type[Warning]):
    """cvae's own warnings (``own``) as one ``warning:`` line; others as Python shows them."""

    def shown(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, own):
            print(f"warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return shown


def _out_of_memory(e: RuntimeError) -> bool:
    text = str(e).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def _asked(e: RuntimeError) -> str:
    import re

    m = re.search(r"allocate (\d+) bytes", str(e)) or re.search(r"allocate ([\d.]+ [KMGT]iB)", str(e))
    if not m:
        return ""
    size = m.group(1)
    return f" (it asked for {int(size) / 1e9:,.1f} GB)" if size.isdigit() else f" (it asked for {size})"


if __name__ == "__main__":
    sys.exit(main())
