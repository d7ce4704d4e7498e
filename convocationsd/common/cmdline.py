"""argparse for both programs, without the import of shutil (and bz2 and lzma with it) that it makes.

argparse makes a formatter for every ``add_argument`` (to check the metavar), and each one imports shutil
to ask the terminal its width. Both programs start often: convctl for every command, the daemon on every
socket activation, with a client waiting.
"""

from __future__ import annotations

import argparse
import os
import sys


def terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``, without importing shutil."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class ArgumentParser(argparse.ArgumentParser):
    def _get_formatter(self) -> argparse.HelpFormatter:
        return argparse.HelpFormatter(prog=self.prog, width=terminal_columns() - 2)
