"""One error tree: every error tunnelmesh raises is a TunnelmeshError, drawn in errors.py.

Read from the sources with ``ast`` (core, every ``tunnelmesh_*`` distribution, ``plugins/*``):

- a ``raise`` of a built-in exception class (``ValueError``, ``RuntimeError``, ...) fails unless
  :data:`ALLOWED_RAISES` names its file and class with the reason Python's contract wants the
  built-in there;
- a class deriving from a built-in exception fails unless it is in the tree (derives from
  ``TunnelmeshError``, maybe through other classes of the tree) or :data:`ALLOWED_CLASSES`
  names it with a reason;
- every class of the tree appears in the drawing of ``tunnelmesh.errors``'s docstring.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Iterator
from pathlib import Path

from tunnelmesh import errors

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = [
    ROOT / "core" / "src",
    *sorted(ROOT.glob("tunnelmesh_*/src")),
    *ROOT.glob("plugins/*/src"),
]

BUILTIN_EXCEPTIONS = frozenset(
    name
    for name in dir(builtins)
    if isinstance(getattr(builtins, name), type)
    and issubclass(getattr(builtins, name), BaseException)
)

_VALIDATOR = (
    "msgspec validation (__post_init__, dec_hook): msgspec turns a ValueError into a "
    "ValidationError, which the loader reports as a ConfigError"
)
_ARGUMENT = "argument validation of a pure function; its callers catch ValueError"
_ABSTRACT = "an abstract method a subclass must override"
_MODULE_GETATTR = "a module __getattr__ (PEP 562) must raise AttributeError for a missing name"
_CLI_EXIT = "a command line's exit status"

# (file relative to the repository, built-in class) -> why the built-in is the right contract.
ALLOWED_RAISES: dict[tuple[str, str], str] = {
    ("tunnelmesh_s3/src/tunnelmesh_s3/objects.py", "ConnectionResetError"): (
        "the client went away before a sendfile: what aiohttp and asyncio raise for a reader "
        "that closed, so the GET handler ends quietly on it as on their own"
    ),
    ("core/src/tunnelmesh/aio/wgsocket.py", "ValueError"): _ARGUMENT + " (parse host:port)",
    ("core/src/tunnelmesh/_manager.py", "ValueError"): _ARGUMENT + " (an unknown registry kind)",
    ("core/src/tunnelmesh/benchmark.py", "ValueError"): _ARGUMENT + " (parse_size, a click type)",
    ("core/src/tunnelmesh/benchmark.py", "ConnectionError"): (
        "the benchmark's stream closed early; asyncio's stream errors are ConnectionErrors and "
        "the caller handles both the same way"
    ),
    ("core/src/tunnelmesh/cli/demo_cmd.py", "SystemExit"): _CLI_EXIT,
    ("core/src/tunnelmesh/cli/dns_cmd.py", "ValueError"): _ARGUMENT + " (one feed line)",
    ("core/src/tunnelmesh/cli/lazy.py", "TypeError"): "a lazy command path names no click command",
    ("core/src/tunnelmesh/cli/lazy.py", "ValueError"): "a lazy command path names another command",
    ("core/src/tunnelmesh/config.py", "ValueError"): _VALIDATOR,
    ("core/src/tunnelmesh/config.py", "NotImplementedError"): (
        "msgspec's dec_hook contract for a type the hook does not decode"
    ),
    ("core/src/tunnelmesh/control_socket.py", "TypeError"): "a handler is not callable",
    ("core/src/tunnelmesh/control_socket.py", "ValueError"): _ARGUMENT + " (one handler a command)",
    ("core/src/tunnelmesh/coordinator/ca.py", "ValueError"): (
        "a CA key file of the wrong type; the loader's own errors for a bad file are ValueErrors"
    ),
    ("core/src/tunnelmesh/dns/resolver.py", "ValueError"): _ARGUMENT,
    ("core/src/tunnelmesh/dns/server.py", "ValueError"): _ARGUMENT + " (parse a listen address)",
    ("core/src/tunnelmesh/filter/conntrack.py", "ValueError"): _ARGUMENT,
    ("core/src/tunnelmesh/filter/rules.py", "ValueError"): _ARGUMENT + " (a rule's fields)",
    ("core/src/tunnelmesh/filter/service.py", "ValueError"): (
        _ARGUMENT + " (the control socket answers a ValueError as a refused command)"
    ),
    ("core/src/tunnelmesh/identity.py", "ValueError"): _ARGUMENT + " (parse an OpenSSH key line)",
    ("core/src/tunnelmesh/impair.py", "ValueError"): _ARGUMENT + " (parse a rate, a loss)",
    ("core/src/tunnelmesh/logs.py", "ValueError"): _ARGUMENT + " (a log format or level)",
    ("core/src/tunnelmesh/metrics/base.py", "NotImplementedError"): _ABSTRACT,
    ("core/src/tunnelmesh/node/paths.py", "ValueError"): _ARGUMENT + " (a probe's addresses)",
    ("core/src/tunnelmesh/node/peers.py", "ValueError"): _ARGUMENT + " (a transport order)",
    ("core/src/tunnelmesh/storage/conformance.py", "AssertionError"): (
        "a conformance kit failure is a test assertion"
    ),
    ("core/src/tunnelmesh/storage/conformance.py", "ConnectionResetError"): (
        "the kit simulates a client that drops its connection"
    ),
    ("core/src/tunnelmesh/stun.py", "ValueError"): _ARGUMENT + " (a transaction ID's length)",
    ("core/src/tunnelmesh/testing/conformance.py", "NotImplementedError"): _ABSTRACT,
    ("core/src/tunnelmesh/testing/statestore.py", "AssertionError"): (
        "a conformance kit failure is a test assertion"
    ),
    ("core/src/tunnelmesh/testing/conformance.py", "ValueError"): _ARGUMENT + " (a packet size)",
    ("plugins/example_transport/src/tunnelmesh_example_tcp/__init__.py", "AttributeError"): (
        _MODULE_GETATTR
    ),
    ("tunnelmesh_proxy/src/tunnelmesh_proxy/listen.py", "ValueError"): (
        _ARGUMENT + " (parse IP:PORT, a click callback)"
    ),
    ("tunnelmesh_proxy/src/tunnelmesh_proxy/netns.py", "OSError"): (
        "a failed setns/unshare, reported as the system call's own error"
    ),
    ("tunnelmesh_proxy/src/tunnelmesh_proxy/netns.py", "ValueError"): _ARGUMENT,
    ("tunnelmesh_relay/src/tunnelmesh_relay/labpeer.py", "SystemExit"): _CLI_EXIT,
    ("tunnelmesh_s3/src/tunnelmesh_s3/config.py", "ValueError"): _VALIDATOR,
    ("tunnelmesh_s3/src/tunnelmesh_s3/fsfiles.py", "ValueError"): (
        "the Storage ABC's contract for a range outside the object"
    ),
    ("tunnelmesh_admin/src/tunnelmesh_admin/config.py", "ValueError"): _VALIDATOR,
    ("tunnelmesh_ssh/src/tunnelmesh_ssh/proto.py", "ValueError"): _ARGUMENT + " (a frame's size)",
    ("tunnelmesh_udp/src/tunnelmesh_udp/__init__.py", "AttributeError"): _MODULE_GETATTR,
    ("tunnelmesh_wg/src/tunnelmesh_wg/concentrator.py", "ValueError"): _VALIDATOR,
    ("tunnelmesh_udp/src/tunnelmesh_udp/static.py", "SystemExit"): _CLI_EXIT,
}

# Exception classes outside the tree on purpose: (file, class) -> why.
ALLOWED_CLASSES: dict[tuple[str, str], str] = {
    ("core/src/tunnelmesh/cli/join_cmd.py", "_Terminated"): (
        "a SIGTERM unwinding join before its event loop, like KeyboardInterrupt: no except "
        "TunnelmeshError may catch it"
    ),
    ("core/src/tunnelmesh/testing/demo.py", "DemoInterrupted"): (
        "a signal unwinding the demo, like KeyboardInterrupt: no except TunnelmeshError may "
        "catch it"
    ),
    ("core/src/tunnelmesh/storage/conformance.py", "_Refused"): (
        "control flow inside one conformance check, never raised out of it"
    ),
    ("core/src/tunnelmesh/testing/authz.py", "AuthzMismatch"): (
        "a conformance kit failure is a test assertion (AssertionError)"
    ),
    ("core/src/tunnelmesh/testing/conformance.py", "ConformanceError"): (
        "a conformance kit failure is a test assertion (AssertionError)"
    ),
}


def _files() -> Iterator[tuple[str, ast.Module]]:
    for src in SOURCE_ROOTS:
        for path in sorted(src.rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), str(path))


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def builtin_raises(files: list[tuple[str, ast.Module]]) -> dict[tuple[str, str], list[int]]:
    """(file, built-in class) -> the lines raising it."""
    found: dict[tuple[str, str], list[int]] = {}
    for rel, tree in files:
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                name = _name(node.exc)
                if name in BUILTIN_EXCEPTIONS:
                    found.setdefault((rel, name), []).append(node.lineno)
    return found


def exception_classes(files: list[tuple[str, ast.Module]]) -> dict[tuple[str, str], list[str]]:
    """(file, class) -> its base names, for every class that derives from an exception."""
    classes: dict[tuple[str, str], list[str]] = {}
    for rel, tree in files:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = [b for b in map(_name, node.bases) if b is not None]
                classes[(rel, node.name)] = bases
    exceptional = set(BUILTIN_EXCEPTIONS)
    grew = True
    while grew:
        grew = False
        for (_, cls), bases in classes.items():
            if cls not in exceptional and exceptional.intersection(bases):
                exceptional.add(cls)
                grew = True
    return {key: bases for key, bases in classes.items() if exceptional.intersection(bases)}


def tree_members(classes: dict[tuple[str, str], list[str]]) -> set[str]:
    """Names of the classes that derive from TunnelmeshError (TunnelmeshError included)."""
    members = {"TunnelmeshError"}
    grew = True
    while grew:
        grew = False
        for (_, cls), bases in classes.items():
            if cls not in members and members.intersection(bases):
                members.add(cls)
                grew = True
    return members


def drawing() -> str:
    doc = errors.__doc__ or ""
    return doc[doc.index("::") :]


def test_no_builtin_exception_raised_without_a_reason() -> None:
    files = list(_files())
    found = builtin_raises(files)
    unexplained = {k: v for k, v in found.items() if k not in ALLOWED_RAISES}
    assert not unexplained, (
        "raise an error of tunnelmesh.errors (or add the file to ALLOWED_RAISES with the reason "
        f"the built-in is the contract): {unexplained}"
    )
    stale = set(ALLOWED_RAISES) - set(found)
    assert not stale, f"ALLOWED_RAISES names raises that are gone: {sorted(stale)}"


def test_every_exception_class_is_in_the_tree() -> None:
    classes = exception_classes(list(_files()))
    members = tree_members(classes)
    outside = sorted(key for key in classes if key[1] not in members and key not in ALLOWED_CLASSES)
    assert not outside, f"derive these from a class of tunnelmesh.errors: {outside}"
    stale = sorted(key for key in ALLOWED_CLASSES if key not in classes or key[1] in members)
    assert not stale, f"ALLOWED_CLASSES names classes that are gone or in the tree: {stale}"


def test_every_class_of_the_tree_is_drawn() -> None:
    classes = exception_classes(list(_files()))
    members = tree_members(classes)
    drawn = drawing()
    missing = sorted(m for m in members if f" {m} " not in drawn and f"\n    {m} " not in drawn)
    assert not missing, f"draw these in tunnelmesh.errors's docstring: {missing}"
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.TunnelmeshError), name


def test_the_scan_finds_what_it_looks_for() -> None:
    """The walkers see a bare raise of a built-in, a subclass chain and a class outside."""
    source = (
        "class TunnelmeshError(Exception): pass\n"
        "class A(TunnelmeshError): pass\n"
        "class B(A, ValueError): pass\n"
        "class C(RuntimeError): pass\n"
        "class D: pass\n"
        "def f():\n"
        "    raise KeyError('x')\n"
        "def g():\n"
        "    raise errors.B\n"
        "def h():\n"
        "    raise builtins.OSError\n"
    )
    files = [("x.py", ast.parse(source))]
    assert builtin_raises(files) == {("x.py", "KeyError"): [7], ("x.py", "OSError"): [11]}
    classes = exception_classes(files)
    assert {cls for _, cls in classes} == {"TunnelmeshError", "A", "B", "C"}
    assert tree_members(classes) == {"TunnelmeshError", "A", "B"}


def test_the_coordinator_state_store_has_its_own_branch() -> None:
    """The coordinator's store fails with StateStoreError, not the object storage's StorageError:
    a coordinator module that catches StorageError would miss every state-store failure."""
    assert not issubclass(errors.StateStoreError, errors.StorageError)
    coordinator = ROOT / "core" / "src" / "tunnelmesh" / "coordinator"
    named = sorted(
        path.name
        for path in coordinator.rglob("*.py")
        if any(
            isinstance(node, ast.Name | ast.alias)
            and (getattr(node, "id", None) or getattr(node, "name", None)) == "StorageError"
            for node in ast.walk(ast.parse(path.read_text()))
        )
    )
    assert not named, f"catch StateStoreError around the state store, not StorageError: {named}"
