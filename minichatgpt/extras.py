"""Optional extras: say which one to install when a chosen feature needs a package that is missing.

``require(("fastapi", "uvicorn"), "serve", "minichatgpt serve")`` raises :class:`MissingDependency` with one
line, ``minichatgpt serve needs fastapi, which is not installed: pip install "minichatgpt[serve]"``. The
``minichatgpt`` command (``recipes.checks.run_command``) prints that line and exits with code 2, the code of
its usage errors, instead of a ``ModuleNotFoundError`` traceback. Modules are looked up, not imported, so a
check costs nothing and can run before a model is loaded.
"""

import importlib.util
import sys
from typing import Sequence


class MissingDependency(ImportError):
    """A package (or a version of one) that the chosen feature needs is not installed; the message says
    what to install."""


def install_hint(extra: str) -> str:
    """The command that installs ``extra`` (from a source checkout: ``pip install -e ".[extra]"``)."""
    return f'pip install "minichatgpt[{extra}]"'


def is_installed(module: str) -> bool:
    """``module`` can be imported (a ``None`` entry in ``sys.modules`` blocks it, as the import system says)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, or a half-initialized module
        return False


def require(modules: Sequence[str], extra: str, feature: str) -> None:
    """Raise ``MissingDependency`` naming ``extra`` when any of ``modules`` is not installed."""
    missing = [name for name in modules if not is_installed(name)]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise MissingDependency(f"{feature} needs {', '.join(missing)}, which {verb} not installed: "
                                f"{install_hint(extra)}")
