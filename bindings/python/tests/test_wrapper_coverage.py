"""Every public name of the native module is used by the pure-Python layer (nothing native is
left unwrapped), and every public name of the package has a docstring or is data."""

import inspect
import pathlib

import laminardb
from laminardb import _laminardb

SOURCES = "\n".join(p.read_text() for p in pathlib.Path(laminardb.__file__).parent.glob("*.py"))


def test_every_native_symbol_is_wrapped():
    missing = []
    for name, obj in vars(_laminardb).items():
        if name.startswith("_"):
            continue
        # Classes are reached through the factories that return them; their methods must be used.
        if not inspect.isclass(obj) and name not in SOURCES:
            missing.append(name)
        if inspect.isclass(obj):
            for m in vars(obj):
                if not m.startswith("_") and f".{m}" not in SOURCES:
                    missing.append(f"{name}.{m}")
    assert missing == []


def test_public_api_is_documented():
    undocumented = [
        n for n in laminardb.__all__
        if callable(getattr(laminardb, n)) and not inspect.getdoc(getattr(laminardb, n))
    ]
    assert undocumented == []
