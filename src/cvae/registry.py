"""Registries of parts: priors, likelihoods, objectives, model classes and likelihood kernels.

A part is a class registered under a name::

    from cvae.priors import PRIORS, Prior

    @PRIORS.register("laplace")
    class LaplacePrior(Prior): ...

after which ``--prior laplace`` trains with it, ``config.json`` names it and ``cvae.load`` rebuilds
it. Parts that live in another installed package are found through the ``cvae.parts`` entry-point
group: each entry point names a module that registers its parts when imported, e.g. in that
package's ``pyproject.toml``::

    [project.entry-points."cvae.parts"]
    laplace = "my_package.laplace_prior"

A part in a file of its own needs no package: ``CVAE_PARTS=laplace_prior.py`` (files or module names,
separated by ``os.pathsep``) imports it in every ``cvae`` command.

Nothing above a registry tests which part it holds: it asks the part.
"""

from __future__ import annotations

import os
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import CvaeError

ENTRY_POINT_GROUP = "cvae.parts"
PARTS_VARIABLE = "CVAE_PARTS"
_plugins_loaded = False


def load_plugins() -> None:
    """Import every module named in the ``cvae.parts`` entry-point group and in ``CVAE_PARTS`` (once per
    process)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # a broken plugin must not break the tool; say which one
            raise CvaeError(f"the cvae plug-in {ep.name!r} ({ep.value}) failed to load: {e}") from None
    for spec in filter(None, os.environ.get(PARTS_VARIABLE, "").split(os.pathsep)):
        import_part(spec.strip())


def import_part(spec: str):
    """Import a file of parts (``my_prior.py``) or a module (``my_package.parts``) that registers them."""
    import importlib
    import importlib.util

    where = f"{PARTS_VARIABLE} names {spec!r}"
    try:
        if spec.endswith(".py"):
            path = Path(spec).expanduser().resolve()
            if not path.is_file():
                raise CvaeError(f"{where}, which is not a file; give the path of a .py file that registers parts, "
                                "or a module name")
            name = f"cvae_parts_{path.stem}_{zlib.crc32(str(path).encode()):08x}"  # one module per file, imported once
            if name in sys.modules:
                return sys.modules[name]
            spec_ = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec_)
            sys.modules[name] = module
            try:
                spec_.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
            return module
        return importlib.import_module(spec)
    except CvaeError as e:
        if str(e).startswith(where):
            raise
        raise CvaeError(f"{where}; importing it failed: {e}") from None
    except Exception as e:  # the part's own code: say which file, and what went wrong there
        raise CvaeError(f"{where}; importing it failed: {type(e).__name__}: {e}") from None


def _same_definition(a: type, b: type) -> bool:
    """Two class objects from the same file's same class statement (the file imported under two names)."""
    import inspect

    try:
        return a.__qualname__ == b.__qualname__ and Path(inspect.getfile(a)).resolve() == Path(inspect.getfile(b)).resolve()
    except (TypeError, OSError):
        return False


class UnknownPart(CvaeError):
    """A name no registered part answers to (``kind``: "prior", "likelihood", ...)."""

    def __init__(self, message: str, kind: str, name: str):
        super().__init__(message)
        self.kind, self.name = kind, name


class Registry:
    """Name -> class, for one kind of part (``kind`` is used in messages: 'prior', 'objective')."""

    def __init__(self, kind: str, flag: str | None = None):
        self.kind = kind
        self.flag = flag  # the command-line flag that picks the part, for error messages
        self._parts: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type], type]:
        def add(cls: type) -> type:
            if name in self._parts and self._parts[name] is not cls:
                if _same_definition(self._parts[name], cls):  # one file imported twice (import, and CVAE_PARTS)
                    cls.name = name
                    return cls
                raise CvaeError(f"a {self.kind} named {name!r} is already registered ({self._parts[name].__qualname__}"
                                f" of {self._parts[name].__module__}); give yours another name")
            self._parts[name] = cls
            cls.name = name
            return cls

        return add

    def get(self, name: str) -> type:
        if name not in self._parts:
            load_plugins()
        try:
            return self._parts[name]
        except KeyError:
            how = f" ({self.flag} NAME)" if self.flag else ""
            raise UnknownPart(f"unknown {self.kind} {name!r}{how}; choose one of {', '.join(self.names())} "
                              f"(or name the file that registers it in {PARTS_VARIABLE}, or install the package that registers "
                              "it)", self.kind, name) from None

    def __contains__(self, name: str) -> bool:
        if name not in self._parts:
            load_plugins()
        return name in self._parts

    def names(self) -> list[str]:
        return list(self._parts)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._parts))

    def items(self):
        return list(self._parts.items())


def check_options(kind: str, name: str, given: dict, defaults: dict) -> dict:
    """``defaults`` updated with ``given``; an unknown option is an error that lists the known ones."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        known = ", ".join(sorted(defaults)) or "none"
        raise CvaeError(f"the {kind} {name!r} has no option(s) {', '.join(unknown)}; its options: {known}")
    return {**defaults, **given}
