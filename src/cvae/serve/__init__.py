"""``cvae serve``: a local web page and a JSON API (``/v1/``) for trained runs.

The page and the API call the same :mod:`cvae.apps` functions as the command line; nothing below
this package knows it exists. The web stack (FastAPI, uvicorn, python-multipart) is an extra:
``pip install "cvae[serve]"``.
"""

from __future__ import annotations

import importlib.util

from ..errors import CvaeError

NEEDS = ("fastapi", "uvicorn", "multipart")


def check_web_stack() -> None:
    """One clear line when the web stack is not installed."""
    missing = [m for m in NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        names = {"multipart": "python-multipart"}
        raise CvaeError(f"cvae serve needs {', '.join(names.get(m, m) for m in missing)}: "
                        'pip install "cvae[serve]"')


def create_app(*args, **kwargs):
    """See :func:`cvae.serve.app.create_app`."""
    check_web_stack()
    from .app import create_app as build

    return build(*args, **kwargs)


__all__ = ["check_web_stack", "create_app"]
