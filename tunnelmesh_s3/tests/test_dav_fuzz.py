"""Bad input to WebDAV's parsers gives their one error, never another exception (fuzzed)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from tunnelmesh_s3.dav import locks as lk
from tunnelmesh_s3.dav.xmlbody import DavXmlError, parse
from tunnelmesh_s3.shareaccess import ShareError, split_path

XMLISH = st.lists(
    st.sampled_from(
        ["<", ">", "/", "D:", "prop", "propfind", ' xmlns:D="DAV:"', "<!DOCTYPE x>", "&a;",
         "<!ENTITY a 'b'>", "]", "[", "x", "\x00", "é", "<?xml version='1.0'?>", "=", '"']
    ),
    max_size=40,
).map("".join)  # fmt: skip
IFISH = st.lists(
    st.sampled_from(["(", ")", "<", ">", "Not", " ", "[", "]", '"e"', "W/", "opaquelocktoken:x",
                     "http://h/a", "DAV:no-lock"]),
    max_size=20,
).map("".join)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=512), XMLISH.map(str.encode)))
def test_xml_parser_raises_only_its_error(body: bytes) -> None:
    try:
        node = parse(body)
    except DavXmlError:
        return
    assert b"<!DOCTYPE" not in body.upper() and node.name


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=80), IFISH))
def test_if_header_parser_raises_only_its_error(header: str) -> None:
    try:
        lists = lk.parse_if(header)
    except lk.IfHeaderError:
        return
    assert lists and all(lst.conditions for lst in lists)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_paths_are_segments_without_dot_dot_or_nul(path: str) -> None:
    try:
        segments = split_path(path)
    except ShareError as exc:
        assert exc.kind == "bad_path"
        return
    assert all(s and s not in (".", "..") and "/" not in s and "\x00" not in s for s in segments)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_timeouts_are_bounded(header: str) -> None:
    assert 1 <= lk.parse_timeout(header) <= lk.MAX_TIMEOUT
