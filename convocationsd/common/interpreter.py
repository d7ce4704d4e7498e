"""How the project starts Python: importing only from the installation, never from a working directory.

``python -m X`` puts the working directory first on ``sys.path`` (``python script.py``, the script's
directory), so a ``json.py`` or a ``convocationsd/`` folder planted there would run as the person, with the
key in reach. ``-P`` (Python 3.11) leaves that entry out and nothing else: unlike ``-I`` it keeps the user
site-packages (a ``pip install --user`` or pipx installation) and the environment the person chose.
"""

from __future__ import annotations

SAFE_PATH = "-P"


def module_command(python: str, module: str) -> list[str]:
    """The command line that runs ``module`` with ``python``, importing nothing from the working directory."""
    return [python, SAFE_PATH, "-m", module]
