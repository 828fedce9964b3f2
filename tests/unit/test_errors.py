"""meterd's one exception tree: every exception class is under MeterdError, the drawing in
``meterd/errors.py`` is true, and a reply from another meter is an AddressMismatchError."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

import meterd
from meterd import errors
from meterd.collector.channel import Dlt645Reply
from meterd.errors import AddressMismatchError, MeterdError, ProtocolError
from meterd.protocols.dlt645.frame import encode_frame
from meterd.protocols.dlt645.messages import ReadRequest, ReadResponse, encode_request, encode_response


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in a meterd module, by name."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(meterd.__path__, "meterd."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, BaseException)
                    and value.__module__ == module.__name__):
                found[f"{module.__name__}.{value.__qualname__}"] = value
    return found


def _drawn_tree() -> list[tuple[str, str]]:
    """(class, drawn parent) for every node of the tree in errors.py's docstring."""
    doc = errors.__doc__ or ""
    pairs: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        if (m := re.match(r"^( *)MeterdError\s*$", line)) is not None:
            stack = [(len(m.group(1)), "MeterdError")]
            continue
        m = re.match(r"^([ |]*)\+-- (\w+)", line)
        if m is None or not stack:
            continue
        depth = len(m.group(1))
        while stack and stack[-1][0] >= depth:
            stack.pop()
        pairs.append((m.group(2), stack[-1][1]))
        stack.append((depth, m.group(2)))
    return pairs


def test_every_exception_class_is_a_meterd_error() -> None:
    outside = sorted(name for name, cls in _exception_classes().items() if not issubclass(cls, MeterdError))
    assert outside == []


def test_the_drawn_tree_is_the_real_one() -> None:
    by_name: dict[str, list[type[BaseException]]] = {}
    for cls in _exception_classes().values():
        by_name.setdefault(cls.__name__, []).append(cls)
    pairs = _drawn_tree()
    assert len(pairs) > 20, "the tree in errors.py's docstring was not found"
    wrong = []
    for name, parent in pairs:
        classes = by_name.get(name)
        if not classes:
            wrong.append(f"{name}: drawn but not defined")
        elif not any(parent in (b.__name__ for b in cls.__bases__) for cls in classes):
            wrong.append(f"{name}: drawn under {parent}, bases {[b.__name__ for b in classes[0].__bases__]}")
    assert wrong == []


def test_the_errors_callers_catch_as_builtins_still_are() -> None:
    """Moving a class under MeterdError keeps the built-in base its callers catch it by."""
    from meterd.billing_link.records import RecordError
    from meterd.config.tasks import TaskSpecError
    from meterd.control.state import LedgerError
    from meterd.storage.spool import SpoolLockedError

    assert issubclass(TaskSpecError, ValueError) and str(TaskSpecError("task 'x': bad")) == "task 'x': bad"
    assert issubclass(LedgerError, ValueError)
    assert issubclass(RecordError, ValueError)
    assert issubclass(SpoolLockedError, RuntimeError)


_REQUEST = encode_request(ReadRequest("000001000001", 0x00010000))
_OTHER = encode_frame(encode_response(ReadResponse("000001000002", 0x00010000, b"\x01\x02\x03\x04")))


def test_a_reply_from_another_meter_is_an_address_mismatch() -> None:
    with pytest.raises(AddressMismatchError) as caught:
        Dlt645Reply(_REQUEST).feed(_OTHER)
    exc = caught.value
    assert isinstance(exc, ProtocolError)
    assert (exc.expected, exc.got) == ("000001000001", "000001000002")
    assert str(exc) == "reply came from 000001000002, not 000001000001"
