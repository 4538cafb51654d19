"""A user's Python code: a scenario or an agent named by file (`path/to/file.py`) or module (`package.module`),
loaded as `python file.py` / `python -m` would find it, with errors that name the file."""

from __future__ import annotations

import importlib
import importlib.util
import os
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
    _search_beside(path.resolve().parent)  # as `python file.py` runs it: a module beside the file imports
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


_BESIDE_FOLDERS: list[str] = []  # the folders of user files that _search_beside put on sys.path, latest first


def _search_beside(folder: Path) -> None:
    """A user file's folder on sys.path, as `_search_also`, but searched before the folders of user files loaded
    earlier in this process; and a module imported from one of those that this folder holds too (a `params.py`
    beside each of two scenario files) is forgotten, so that each file imports its own neighbour (the first
    folder's was taken for both, without a word). A module beside the file is otherwise imported once per process,
    as Python imports (`importlib.reload` takes an edit)."""
    key = str(folder)
    if key in sys.path and key not in _BESIDE_FOLDERS:  # the user's own sys.path (PYTHONPATH, ...): left as it is
        _search_also(folder)
        return
    others = [f for f in _BESIDE_FOLDERS if f != key]
    try:
        here = {entry.stem if entry.suffix == ".py" else entry.name for entry in folder.iterdir()
                if entry.suffix == ".py" or entry.is_dir()}
    except OSError:
        here = set()
    for name, module in list(sys.modules.items()):
        top = name.partition(".")[0]
        file = getattr(module, "__file__", None)
        if top not in here or not file or any(Path(file).is_relative_to(package) for package in _OUR_PACKAGES):
            continue
        if any(file == os.path.join(f, top + ".py") or file.startswith(os.path.join(f, top) + os.sep) for f in others):
            del sys.modules[name]
    for f in [key, *others]:
        while f in sys.path:
            sys.path.remove(f)
    _BESIDE_FOLDERS[:] = [key, *others]
    sys.path.extend(_BESIDE_FOLDERS)


def _search_also(folder: Path) -> None:
    """Put a user's folder at the end of sys.path (so it shadows nothing), kept: a module may import others from
    it later, inside its functions."""
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
