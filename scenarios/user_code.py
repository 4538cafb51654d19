"""A user's Python code: a scenario or an agent named by file (`path/to/file.py`) or module (`package.module`),
loaded as `python file.py` / `python -m` would find it, with errors that name the file."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

_OUR_PACKAGES = tuple(Path(__file__).resolve().parents[1] / name for name in ("scenarios", "carla_bridge",
                                                                              "neural_sensor"))


def raised_by_our_checks(err: BaseException, module) -> bool:
    """Whether `err` was raised inside this project's packages (a field a Scenario, EgoStart or AgentSpec refuses,
    or a layout's check), not in the user's module or a library it called: the innermost frame decides."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    raised_in = Path(tb.tb_frame.f_code.co_filename).resolve()
    user_file = getattr(module, "__file__", None)
    if user_file is not None and raised_in == Path(user_file).resolve():
        return False
    return any(raised_in.is_relative_to(package) for package in _OUR_PACKAGES)


def module_from_file(path: Path | str, what: str = "scenario"):
    """The module of a user's .py file (a scenario's, or an agent's: `what`); ValueError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} file {path} is a folder; name the .py file in it (or give package.module)")
    if not path.is_file():
        raise ValueError(f"{what} file {path} does not exist")
    if path.suffix != ".py":
        raise ValueError(f"{what} file {path} is not a .py file")
    module_name = f"_neural_sensor_user_{what}_{abs(hash(str(path.resolve())))}"
    _search_also(path.resolve().parent)  # as `python file.py` runs it: a module beside the file imports
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        sys.modules.pop(module_name, None)
        raise ValueError(f"{what} file {path} failed to load: {type(err).__name__}: {err}") from err
    return module


def import_user_module(name: str):
    """importlib.import_module(name), the current folder searched too (after the rest of sys.path): what
    `python -m scenarios.cli` does, so that the installed `neural-sensor` script finds a user's
    package.module from the folder above its package, as the README says."""
    if "" not in sys.path:
        _search_also(Path.cwd())
    return importlib.import_module(name)


def _search_also(folder: Path) -> None:
    """Put a user's folder at the end of sys.path (so it shadows nothing), kept: a module may import others from
    it later, inside its functions."""
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
