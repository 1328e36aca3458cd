"""WebDAV's XML: request bodies parsed strictly, responses built as text.

Request bodies (PROPFIND, PROPPATCH, LOCK) come from the network. The parser is expat with
every DTD refused (``<!DOCTYPE``: so no entity can be declared, expanded or fetched; the
"billion laughs" and external-entity attacks have nothing to stand on), a size bound checked
before parsing (:data:`MAX_BODY`), and bounds on depth and element count while parsing. What
it refuses raises :class:`DavXmlError`, which the server answers 400.

The tree is the little :class:`Node` (namespace, local name, children, text), enough for the
three request documents and for dead properties, which are kept as their serialized XML.
"""

from __future__ import annotations

import xml.parsers.expat
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

from tunnelmesh.errors import RemoteProtocolError

__all__ = [
    "DAV",
    "MAX_BODY",
    "DavXmlError",
    "Node",
    "element",
    "parse",
    "serialize",
]

DAV = "DAV:"
MAX_BODY = 256 * 1024
"""The largest request body parsed (bytes)."""
MAX_DEPTH = 32
MAX_ELEMENTS = 10_000


class DavXmlError(RemoteProtocolError):
    """A WebDAV request body that is not acceptable XML."""


@dataclass
class Node:
    """One XML element: namespace URI ("" for none), local name, attributes, children, text."""

    ns: str
    name: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[Node] = field(default_factory=list)
    text: str = ""

    def find(self, ns: str, name: str) -> Node | None:
        return next((c for c in self.children if c.ns == ns and c.name == name), None)

    def all(self, ns: str, name: str) -> list[Node]:
        return [c for c in self.children if c.ns == ns and c.name == name]

    def is_(self, ns: str, name: str) -> bool:
        return self.ns == ns and self.name == name


def _split(tag: str) -> tuple[str, str]:
    ns, sep, name = tag.rpartition(" ")
    return (ns, name) if sep else ("", tag)


def parse(body: bytes) -> Node:
    """The root element of a request body.

    Raises:
        DavXmlError: too large, a DTD, not well-formed, too deep or too many elements.
    """
    if len(body) > MAX_BODY:
        raise DavXmlError(f"XML body over {MAX_BODY} bytes")
    parser = xml.parsers.expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[Node] = []
    root: list[Node] = []
    count = 0

    def refuse_dtd(*_: object) -> None:
        raise DavXmlError("DTDs are not allowed in WebDAV bodies")

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal count
        count += 1
        if count > MAX_ELEMENTS or len(stack) >= MAX_DEPTH:
            raise DavXmlError("XML body too deep or too large")
        ns, name = _split(tag)
        node = Node(ns, name, {_split(k)[1]: v for k, v in attrs.items()})
        if stack:
            stack[-1].children.append(node)
        else:
            root.append(node)
        stack.append(node)

    def end(_tag: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        if stack:
            stack[-1].text += data

    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd
    parser.ExternalEntityRefHandler = refuse_dtd  # type: ignore[assignment]
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(body, True)
    except xml.parsers.expat.ExpatError as exc:
        raise DavXmlError(f"malformed XML: {exc}") from None
    if not root:
        raise DavXmlError("no root element")
    return root[0]


def serialize(node: Node, prefixes: dict[str, str] | None = None) -> str:
    """``node`` as XML text, every namespace declared where it is first used."""
    prefixes = dict(prefixes or {})
    decl = ""
    if node.ns and node.ns not in prefixes:
        prefixes[node.ns] = f"ns{len(prefixes)}"
        decl = f" xmlns:{prefixes[node.ns]}={quoteattr(node.ns)}"
    tag = f"{prefixes[node.ns]}:{node.name}" if node.ns else node.name
    attrs = "".join(f" {k}={quoteattr(v)}" for k, v in node.attrs.items())
    inner = escape(node.text) + "".join(serialize(c, prefixes) for c in node.children)
    return f"<{tag}{decl}{attrs}>{inner}</{tag}>"


def element(tag: str, text: str = "") -> str:
    """``<D:tag>text</D:tag>`` with ``text`` escaped (``D`` is the DAV: prefix of responses)."""
    return f"<D:{tag}>{escape(text)}</D:{tag}>"
