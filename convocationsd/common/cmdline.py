"""argparse for both programs, without two costs it has at start-up. Both programs start often: convctl for
every command, the daemon on every socket activation, with a client waiting.

- argparse makes a formatter for every ``add_argument`` (to check the metavar), and each one imports
  shutil (and bz2 and lzma with it) to ask the terminal its width.
- argparse translates its own words ("usage:", "options", the help option's help) through gettext on every
  use, and each call looks for message catalogues on disk again: 51 calls, 9 M instructions, 6 % of a
  `convctl status` (bench/ANALYSIS.md). Asked once per message, the answer is the same: the catalogues
  and the locale do not change while the program runs.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

argparse._ = functools.cache(argparse._)  # type: ignore[attr-defined]  # see the module doc


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
