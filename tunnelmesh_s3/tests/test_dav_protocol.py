"""WebDAV protocol tests without the mesh, in the spirit of litmus (basic, copymove, props,
locks, http), against the real server over loopback, plus authorization and bad input.

Callers are told apart by source address (see davkit): alice owns ``team``, bob only reads
it, carol owns ``priv``, 127.0.0.9 is no peer.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from davkit import Dav, dav_server
from tunnelmesh_s3.dav.server import DAV_STATS
from tunnelmesh_s3.metrics import DavCollector

D = "{DAV:}"


@pytest.fixture(scope="module")
def dav(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dav]:
    yield from dav_server(tmp_path_factory.mktemp("dav"))


def ms(body: bytes) -> dict[str, ET.Element]:
    """A multistatus body: href to its response element."""
    root = ET.fromstring(body)
    assert root.tag == D + "multistatus"
    return {r.findtext(D + "href") or "": r for r in root.findall(D + "response")}


def prop(resp: ET.Element, name: str, status: int = 200) -> ET.Element | None:
    for ps in resp.findall(D + "propstat"):
        if f" {status} " in (ps.findtext(D + "status") or ""):
            found = ps.find(f"{D}prop/{name}")
            if found is not None:
                return found
    return None


PROPFIND_ALL = b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'


# --- basic ---------------------------------------------------------------------------------


def test_options_says_class_1_and_2(dav: Dav) -> None:
    status, headers, _ = dav.request("OPTIONS", "/team/")
    assert status == 200
    assert headers["dav"] == "1, 2"
    for method in ("PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "PUT"):
        assert method in headers["allow"]


def test_put_get_head_delete(dav: Dav) -> None:
    data = os.urandom(300_000)
    assert dav.request("PUT", "/team/basic.bin", data)[0] == 201
    assert dav.request("PUT", "/team/basic.bin", data)[0] == 204  # replaced
    status, headers, body = dav.request("GET", "/team/basic.bin")
    assert status == 200 and body == data
    assert headers["etag"] == f'"{hashlib.md5(data).hexdigest()}"'
    status, headers, body = dav.request("HEAD", "/team/basic.bin")
    assert status == 200 and body == b"" and headers["content-length"] == str(len(data))
    status, headers, body = dav.request("GET", "/team/basic.bin", headers={"Range": "bytes=10-19"})
    assert status == 206 and body == data[10:20]
    assert headers["content-range"] == f"bytes 10-19/{len(data)}"
    assert dav.request("GET", "/team/basic.bin", headers={"Range": "bytes=-5"})[2] == data[-5:]
    assert dav.request("GET", "/team/basic.bin", headers={"Range": "bytes=999999-"})[0] == 416
    assert dav.request("DELETE", "/team/basic.bin")[0] == 204
    assert dav.request("GET", "/team/basic.bin")[0] == 404
    assert dav.request("DELETE", "/team/basic.bin")[0] == 404


def test_put_utf8_name_is_the_object_key(dav: Dav) -> None:
    assert dav.request("PUT", "/team/%C3%A9t%C3%A9%20r%C3%A9sum%C3%A9.txt", b"hi")[0] == 201
    info = dav.run(dav.storage.head_object("team", "été résumé.txt"))
    assert info.size == 2
    listing = ms(dav.request("PROPFIND", "/team/", PROPFIND_ALL, {"Depth": "1"})[2])
    assert "/team/%C3%A9t%C3%A9%20r%C3%A9sum%C3%A9.txt" in listing


def test_put_without_parent_is_409(dav: Dav) -> None:
    assert dav.request("PUT", "/team/nodir/x.txt", b"x")[0] == 409
    assert dav.request("MKCOL", "/team/nodir/sub/")[0] == 409


def test_mkcol(dav: Dav) -> None:
    assert dav.request("MKCOL", "/team/coll/")[0] == 201
    assert dav.request("MKCOL", "/team/coll/")[0] == 405  # exists
    assert dav.request("PUT", "/team/plain.txt", b"p")[0] in (201, 204)
    assert dav.request("MKCOL", "/team/plain.txt/")[0] == 405  # over a file
    assert dav.request("MKCOL", "/team/withbody/", b"<x/>")[0] == 415
    assert dav.request("PUT", "/team/coll/inner.txt", b"in")[0] == 201
    assert dav.request("PUT", "/team/coll", b"x")[0] == 405  # a collection is no file
    assert dav.request("DELETE", "/team/coll/")[0] == 204  # recursive
    assert dav.request("GET", "/team/coll/inner.txt")[0] == 404


def test_a_directory_is_a_marker_object_and_s3_prefixes_are_directories(dav: Dav) -> None:
    assert dav.request("MKCOL", "/team/marked/")[0] == 201
    info = dav.run(dav.storage.head_object("team", "marked/"))
    assert info.size == 0

    async def body() -> object:
        yield b"from s3"

    dav.run(dav.storage.put_object("team", "implicit/deep/file.txt", body()))
    listing = ms(dav.request("PROPFIND", "/team/implicit/", None, {"Depth": "1"})[2])
    assert set(listing) == {"/team/implicit/", "/team/implicit/deep/"}
    assert (
        prop(listing["/team/implicit/deep/"], D + "resourcetype").find(D + "collection") is not None
    )  # type: ignore[union-attr]
    assert dav.request("GET", "/team/implicit/deep/file.txt")[2] == b"from s3"


# --- copymove ------------------------------------------------------------------------------


def test_copy_and_move_files(dav: Dav) -> None:
    port = dav.port
    dav.request("PUT", "/team/src.txt", b"source")
    dest = {"Destination": f"http://127.0.0.1:{port}/team/copy.txt"}
    assert dav.request("COPY", "/team/src.txt", None, dest)[0] == 201
    assert dav.request("COPY", "/team/src.txt", None, dest)[0] == 204  # overwritten
    assert dav.request("COPY", "/team/src.txt", None, {**dest, "Overwrite": "F"})[0] == 412
    assert dav.request("GET", "/team/copy.txt")[2] == b"source"
    dest = {"Destination": "/team/moved.txt"}  # an absolute path works too
    assert dav.request("MOVE", "/team/src.txt", None, dest)[0] == 201
    assert dav.request("GET", "/team/src.txt")[0] == 404
    assert dav.request("GET", "/team/moved.txt")[2] == b"source"
    assert dav.request("MOVE", "/team/moved.txt", None, {"Destination": "/team/no/x"})[0] == 409
    assert (
        dav.request(
            "MOVE", "/team/copy.txt", None, {"Destination": "/team/moved.txt", "Overwrite": "F"}
        )[0]
        == 412
    )


def test_copy_and_move_collections(dav: Dav) -> None:
    dav.request("MKCOL", "/team/tree/")
    dav.request("MKCOL", "/team/tree/sub/")
    dav.request("PUT", "/team/tree/a.txt", b"a")
    dav.request("PUT", "/team/tree/sub/b.txt", b"b")
    assert dav.request("COPY", "/team/tree/", None, {"Destination": "/team/tree2/"})[0] == 201
    assert dav.request("GET", "/team/tree2/sub/b.txt")[2] == b"b"
    assert (
        dav.request("COPY", "/team/tree/", None, {"Destination": "/team/shallow/", "Depth": "0"})[0]
        == 201
    )
    assert set(ms(dav.request("PROPFIND", "/team/shallow/", None, {"Depth": "1"})[2])) == {
        "/team/shallow/"
    }
    assert (
        dav.request("COPY", "/team/tree/", None, {"Destination": "/team/tree/sub/inside/"})[0]
        == 403
    )
    assert dav.request("MOVE", "/team/tree/", None, {"Destination": "/team/tree3/"})[0] == 201
    assert dav.request("PROPFIND", "/team/tree/", None, {"Depth": "0"})[0] == 404
    assert dav.request("GET", "/team/tree3/a.txt")[2] == b"a"
    assert dav.request("GET", "/team/tree3/sub/b.txt")[2] == b"b"
    # overwrite a collection with a file
    assert dav.request("MOVE", "/team/tree3/a.txt", None, {"Destination": "/team/tree2/"})[0] == 204
    assert dav.request("GET", "/team/tree2")[2] == b"a"
    assert dav.request("GET", "/team/tree2/sub/b.txt")[0] == 404


# --- props ---------------------------------------------------------------------------------


def test_propfind_depth(dav: Dav) -> None:
    dav.request("MKCOL", "/team/pf/")
    dav.request("PUT", "/team/pf/f.txt", b"12345")
    status, _, body = dav.request("PROPFIND", "/team/pf/", PROPFIND_ALL, {"Depth": "1"})
    assert status == 207
    listing = ms(body)
    assert set(listing) == {"/team/pf/", "/team/pf/f.txt"}
    f = listing["/team/pf/f.txt"]
    assert prop(f, D + "getcontentlength").text == "5"  # type: ignore[union-attr]
    assert prop(f, D + "getetag").text == f'"{hashlib.md5(b"12345").hexdigest()}"'  # type: ignore[union-attr]
    assert prop(f, D + "getlastmodified") is not None
    assert prop(listing["/team/pf/"], D + "resourcetype").find(D + "collection") is not None  # type: ignore[union-attr]
    assert set(ms(dav.request("PROPFIND", "/team/pf/", None, {"Depth": "0"})[2])) == {"/team/pf/"}


@pytest.mark.parametrize("depth", ["infinity", None])
def test_propfind_infinity_is_refused_clearly(dav: Dav, depth: str | None) -> None:
    status, _, body = dav.request("PROPFIND", "/team/", None, {"Depth": depth} if depth else {})
    assert status == 403
    assert b"propfind-finite-depth" in body


def test_propfind_named_props_and_propname(dav: Dav) -> None:
    dav.request("PUT", "/team/named.txt", b"n")
    body = (
        b'<D:propfind xmlns:D="DAV:" xmlns:Z="urn:z"><D:prop><D:getcontentlength/>'
        b"<Z:nothere/></D:prop></D:propfind>"
    )
    r = ms(dav.request("PROPFIND", "/team/named.txt", body, {"Depth": "0"})[2])["/team/named.txt"]
    assert prop(r, D + "getcontentlength").text == "1"  # type: ignore[union-attr]
    assert prop(r, "{urn:z}nothere", 404) is not None
    body = b'<D:propfind xmlns:D="DAV:"><D:propname/></D:propfind>'
    r = ms(dav.request("PROPFIND", "/team/named.txt", body, {"Depth": "0"})[2])["/team/named.txt"]
    assert prop(r, D + "getetag") is not None and not (prop(r, D + "getetag").text or "")  # type: ignore[union-attr]


def test_proppatch_dead_properties_round_trip_and_follow_moves(dav: Dav) -> None:
    dav.request("PUT", "/team/props.txt", b"p")
    body = (
        '<?xml version="1.0" encoding="utf-8"?><D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z">'
        "<D:set><D:prop><Z:color>blue</Z:color><Z:uni>\U0001f600 é</Z:uni>"
        '<Z:nested><Z:inner a="1">x</Z:inner></Z:nested></D:prop></D:set>'
        "</D:propertyupdate>"
    ).encode()
    status, _, out = dav.request("PROPPATCH", "/team/props.txt", body)
    assert status == 207 and prop(ms(out)["/team/props.txt"], "{urn:z}color") is not None
    assert dav.request("GET", "/team/props.txt")[2] == b"p"  # content kept
    ask = b'<D:propfind xmlns:D="DAV:" xmlns:Z="urn:z"><D:prop><Z:color/><Z:uni/><Z:nested/></D:prop></D:propfind>'
    r = ms(dav.request("PROPFIND", "/team/props.txt", ask, {"Depth": "0"})[2])["/team/props.txt"]
    assert prop(r, "{urn:z}color").text == "blue"  # type: ignore[union-attr]
    assert prop(r, "{urn:z}uni").text == "\U0001f600 é"  # type: ignore[union-attr]
    assert prop(r, "{urn:z}nested").find("{urn:z}inner").get("a") == "1"  # type: ignore[union-attr]
    dav.request("MOVE", "/team/props.txt", None, {"Destination": "/team/props2.txt"})
    r = ms(dav.request("PROPFIND", "/team/props2.txt", ask, {"Depth": "0"})[2])["/team/props2.txt"]
    assert prop(r, "{urn:z}color").text == "blue"  # type: ignore[union-attr]
    remove = b'<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z"><D:remove><D:prop><Z:color/></D:prop></D:remove></D:propertyupdate>'
    assert dav.request("PROPPATCH", "/team/props2.txt", remove)[0] == 207
    r = ms(dav.request("PROPFIND", "/team/props2.txt", ask, {"Depth": "0"})[2])["/team/props2.txt"]
    assert prop(r, "{urn:z}color", 404) is not None
    assert prop(r, "{urn:z}uni") is not None
    # a live property cannot be set: 403 for it, 424 for the rest, nothing changed
    live = b'<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z"><D:set><D:prop><D:getetag>x</D:getetag><Z:color>red</Z:color></D:prop></D:set></D:propertyupdate>'
    r = ms(dav.request("PROPPATCH", "/team/props2.txt", live)[2])["/team/props2.txt"]
    assert prop(r, D + "getetag", 403) is not None and prop(r, "{urn:z}color", 424) is not None
    r = ms(dav.request("PROPFIND", "/team/props2.txt", ask, {"Depth": "0"})[2])["/team/props2.txt"]
    assert prop(r, "{urn:z}color", 404) is not None


def test_proppatch_on_a_collection(dav: Dav) -> None:
    dav.request("MKCOL", "/team/pcoll/")
    body = b'<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z"><D:set><D:prop><Z:k>v</Z:k></D:prop></D:set></D:propertyupdate>'
    assert dav.request("PROPPATCH", "/team/pcoll/", body)[0] == 207
    ask = b'<D:propfind xmlns:D="DAV:" xmlns:Z="urn:z"><D:prop><Z:k/></D:prop></D:propfind>'
    r = ms(dav.request("PROPFIND", "/team/pcoll/", ask, {"Depth": "0"})[2])["/team/pcoll/"]
    assert prop(r, "{urn:z}k").text == "v"  # type: ignore[union-attr]


# --- locks ---------------------------------------------------------------------------------

LOCKINFO = (
    b'<?xml version="1.0" encoding="utf-8"?><D:lockinfo xmlns:D="DAV:">'
    b"<D:lockscope><D:{scope}/></D:lockscope><D:locktype><D:write/></D:locktype>"
    b"<D:owner><D:href>litmus</D:href></D:owner></D:lockinfo>"
)


def lock(
    dav: Dav, path: str, scope: str = "exclusive", who: str = "alice", **h: str
) -> tuple[int, str]:
    status, headers, _ = dav.request(
        "LOCK",
        path,
        LOCKINFO.replace(b"{scope}", scope.encode()),
        {"Timeout": "Second-100", **h},
        who=who,
    )
    return status, headers.get("lock-token", "").strip("<>")


def test_lock_enforced_on_writes_and_unlock(dav: Dav) -> None:
    dav.request("PUT", "/team/locked.txt", b"v1")
    status, token = lock(dav, "/team/locked.txt")
    assert status == 200 and token.startswith("opaquelocktoken:")
    # no token: 423, nothing changed
    assert dav.request("PUT", "/team/locked.txt", b"v2")[0] == 423
    assert dav.request("DELETE", "/team/locked.txt")[0] == 423
    assert dav.request("MOVE", "/team/locked.txt", None, {"Destination": "/team/l2.txt"})[0] == 423
    assert dav.request("GET", "/team/locked.txt")[2] == b"v1"
    # a wrong token: the If header fails (412)
    bad = {"If": "(<opaquelocktoken:00000000-0000-0000-0000-000000000000>)"}
    assert dav.request("PUT", "/team/locked.txt", b"v2", bad)[0] == 412
    # the right token
    good = {"If": f"(<{token}>)"}
    assert dav.request("PUT", "/team/locked.txt", b"v3", good)[0] == 204
    assert dav.request("GET", "/team/locked.txt")[2] == b"v3"
    # tagged list, and with Not <DAV:no-lock>
    tagged = {"If": f"<http://127.0.0.1:{dav.port}/team/locked.txt> (<{token}>)"}
    assert dav.request("PUT", "/team/locked.txt", b"v4", tagged)[0] == 204
    withnot = {"If": f"(<{token}>) (Not <DAV:no-lock>)"}
    assert dav.request("PUT", "/team/locked.txt", b"v5", withnot)[0] == 204
    # the lock shows in lockdiscovery
    ask = b'<D:propfind xmlns:D="DAV:"><D:prop><D:lockdiscovery/></D:prop></D:propfind>'
    r = ms(dav.request("PROPFIND", "/team/locked.txt", ask, {"Depth": "0"})[2])["/team/locked.txt"]
    assert prop(r, D + "lockdiscovery").findtext(f"{D}activelock/{D}locktoken/{D}href") == token  # type: ignore[union-attr]
    # a second exclusive lock conflicts
    assert lock(dav, "/team/locked.txt")[0] == 423
    # refresh
    status, _, _ = dav.request(
        "LOCK", "/team/locked.txt", None, {"If": f"(<{token}>)", "Timeout": "Second-200"}
    )
    assert (
        status == 200
        and b"Second-200"
        in dav.request(
            "LOCK", "/team/locked.txt", None, {"If": f"(<{token}>)", "Timeout": "Second-200"}
        )[2]
    )
    # unlock
    assert (
        dav.request("UNLOCK", "/team/locked.txt", None, {"Lock-Token": "<opaquelocktoken:nope>"})[0]
        == 409
    )
    assert dav.request("UNLOCK", "/team/locked.txt", None, {"Lock-Token": f"<{token}>"})[0] == 204
    assert dav.request("PUT", "/team/locked.txt", b"v6")[0] == 204


def test_conditional_put_with_etags(dav: Dav) -> None:
    _, headers, _ = dav.request("PUT", "/team/cond.txt", b"c1")
    etag = headers["etag"]
    assert dav.request("PUT", "/team/cond.txt", b"c2", {"If": f"([{etag}])"})[0] == 204
    assert dav.request("PUT", "/team/cond.txt", b"c3", {"If": f"([{etag}])"})[0] == 412  # stale
    assert dav.request("PUT", "/team/cond.txt", b"c3", {"If": f"(Not [{etag}])"})[0] == 204
    assert dav.request("PUT", "/team/cond.txt", b"c4", {"If-None-Match": "*"})[0] == 412


def test_a_lock_counts_only_for_the_peer_that_holds_it(dav: Dav) -> None:
    status, token = lock(dav, "/priv/", who="carol")  # nothing there yet: 403 the root
    assert status == 403
    dav.request("MKCOL", "/priv/d/", who="carol")
    status, token = lock(dav, "/priv/d/", who="carol")
    assert status == 200
    # a depth-infinity lock covers new members: carol needs her token to add a file
    assert dav.request("PUT", "/priv/d/x", b"x", who="carol")[0] == 423
    assert dav.request("PUT", "/priv/d/x", b"x", {"If": f"(<{token}>)"}, who="carol")[0] == 201
    # alice may not even see priv; with the stolen token she still cannot write
    assert dav.request("PUT", "/priv/d/x", b"y", {"If": f"(<{token}>)"}, who="alice")[0] == 403


def test_shared_locks_and_lock_null(dav: Dav) -> None:
    dav.request("PUT", "/team/shared.txt", b"s")
    assert lock(dav, "/team/shared.txt", "shared")[0] == 200
    assert lock(dav, "/team/shared.txt", "shared")[0] == 200
    assert lock(dav, "/team/shared.txt", "exclusive")[0] == 423
    status, token = lock(dav, "/team/new-by-lock.txt")
    assert status == 201
    assert dav.request("GET", "/team/new-by-lock.txt")[2] == b""
    assert (
        dav.request("UNLOCK", "/team/new-by-lock.txt", None, {"Lock-Token": f"<{token}>"})[0] == 204
    )


def test_lock_timeouts_expire(dav: Dav) -> None:
    from tunnelmesh_s3.dav import locks as lk

    table = lk.LockTable()
    a = table.lock(
        "s/a", exclusive=True, infinity=False, owner_key="k", owner_xml="", timeout=10, now=100.0
    )
    assert table.blocking("s/a", set(), "k", 105.0, subtree=False) is a
    assert table.blocking("s/a", set(), "k", 110.0, subtree=False) is None  # expired
    assert lk.parse_timeout("Infinite") == lk.MAX_TIMEOUT
    assert lk.parse_timeout("Second-99999999") == lk.MAX_TIMEOUT
    small = lk.LockTable(max_locks=10, max_per_owner=2)
    for i in range(2):
        small.lock(
            f"s/{i}",
            exclusive=True,
            infinity=False,
            owner_key="k",
            owner_xml="",
            timeout=10,
            now=0.0,
        )
    with pytest.raises(lk.LockConflict, match="too many"):
        small.lock(
            "s/9", exclusive=True, infinity=False, owner_key="k", owner_xml="", timeout=10, now=0.0
        )


# --- authorization ---------------------------------------------------------------------------


def test_read_only_member_reads_and_gets_403_on_every_write(dav: Dav) -> None:
    dav.request("PUT", "/team/ro.txt", b"for bob")
    dav.request("MKCOL", "/team/rodir/")
    assert dav.request("GET", "/team/ro.txt", who="bob")[2] == b"for bob"
    assert dav.request("PROPFIND", "/team/", None, {"Depth": "1"}, who="bob")[0] == 207
    proppatch = b'<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop><D:x>1</D:x></D:prop></D:set></D:propertyupdate>'
    for method, path, body, headers in (
        ("PUT", "/team/ro.txt", b"bob was here", {}),
        ("PUT", "/team/new.txt", b"bob was here", {}),
        ("DELETE", "/team/ro.txt", None, {}),
        ("MKCOL", "/team/bobdir/", None, {}),
        ("MOVE", "/team/ro.txt", None, {"Destination": "/team/x.txt"}),
        ("COPY", "/team/ro.txt", None, {"Destination": "/team/x.txt"}),
        ("PROPPATCH", "/team/ro.txt", proppatch, {}),
        ("LOCK", "/team/ro.txt", LOCKINFO.replace(b"{scope}", b"exclusive"), {}),
        ("DELETE", "/team/rodir/", None, {}),
    ):
        assert dav.request(method, path, body, headers, who="bob")[0] == 403, method
    assert dav.request("GET", "/team/ro.txt")[2] == b"for bob"
    assert dav.request("GET", "/team/new.txt")[0] == 404


def test_non_members_and_strangers_are_refused(dav: Dav) -> None:
    assert dav.request("GET", "/priv/", who="alice")[0] == 403
    assert dav.request("PROPFIND", "/priv/", None, {"Depth": "0"}, who="bob")[0] == 403
    assert dav.request("PUT", "/priv/x", b"x", who="alice")[0] == 403
    assert dav.request("OPTIONS", "/team/", who="nobody")[0] == 403
    assert dav.request("GET", "/team/ro.txt", who="nobody")[0] == 403
    # a bucket that is no share is not served, even to its owner
    assert dav.request("PROPFIND", "/plainbucket/", None, {"Depth": "0"})[0] == 404
    # copying out of a share into one you cannot write
    dav.request("PUT", "/team/leak.txt", b"l")
    assert dav.request("COPY", "/team/leak.txt", None, {"Destination": "/priv/leak.txt"})[0] == 403


def test_root_lists_only_the_callers_shares(dav: Dav) -> None:
    assert set(ms(dav.request("PROPFIND", "/", None, {"Depth": "1"}, who="alice")[2])) == {
        "/",
        "/team/",
    }
    assert set(ms(dav.request("PROPFIND", "/", None, {"Depth": "1"}, who="carol")[2])) == {
        "/",
        "/priv/",
    }


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/team/../priv/x", "/team/a/%2e%2e/b", "/team/%00x", "/team/" + "a" * 1100, "/team/%ff"],
)
def test_bad_paths_are_400(dav: Dav, path: str) -> None:
    status, _, body = dav.request("PUT", path, b"x")
    assert status == 400, body
    assert dav.request("GET", path)[0] == 400


def test_traversal_in_destination_is_refused(dav: Dav) -> None:
    dav.request("PUT", "/team/t.txt", b"t")
    assert (
        dav.request("COPY", "/team/t.txt", None, {"Destination": "/team/../priv/t.txt"})[0] == 400
    )
    assert dav.request("COPY", "/team/t.txt", None, {"Destination": "/"})[0] == 403


@pytest.mark.parametrize(
    "body",
    [
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><D:propfind xmlns:D="DAV:"><D:prop><D:x>&b;</D:x></D:prop></D:propfind>',
        b'<?xml version="1.0"?><!DOCTYPE x SYSTEM "file:///etc/passwd"><D:propfind xmlns:D="DAV:"/>',
        b"<D:propfind xmlns:D='DAV:'><D:allprop></D:propfind>",
        b"not xml at all",
        b"<D:propfind xmlns:D='DAV:'>" + b"<a>" * 100 + b"</a>" * 100 + b"</D:propfind>",
        b"<D:propfind xmlns:D='DAV:'><D:prop>" + b"<x/>" * 300_000 + b"</D:prop></D:propfind>",
        b"<D:nonsense xmlns:D='DAV:'/>",
    ],
    ids=["entities", "external-dtd", "unclosed", "not-xml", "deep", "huge", "wrong-root"],
)
def test_bad_xml_bodies_are_4xx_and_counted(dav: Dav, body: bytes) -> None:
    stats = dav.app[DAV_STATS]
    before = stats.requests.get(("PROPFIND", 400), 0) + stats.requests.get(("PROPFIND", 413), 0)
    status, _, text = dav.request("PROPFIND", "/team/", body, {"Depth": "0"})
    assert status in (400, 413), text
    assert text.strip()  # says what was wrong
    after = stats.requests.get(("PROPFIND", 400), 0) + stats.requests.get(("PROPFIND", 413), 0)
    assert after == before + 1


@pytest.mark.parametrize(
    "header", ["<x>", "(", "(<a>", "()", "(Not Not <a>)", "garbage", '(["e"] (']
)
def test_bad_if_headers_are_400(dav: Dav, header: str) -> None:
    dav.request("PUT", "/team/ifh.txt", b"i")
    assert dav.request("PUT", "/team/ifh.txt", b"j", {"If": header})[0] == 400
    assert dav.request("GET", "/team/ifh.txt")[2] == b"i"


def test_unknown_method_is_405_and_counted_as_other(dav: Dav) -> None:
    assert dav.request("BREW", "/team/")[0] == 400  # no HTTP method at all: aiohttp's parser
    assert dav.request("PATCH", "/team/")[0] == 405  # HTTP, not WebDAV
    assert dav.app[DAV_STATS].requests.get(("other", 405), 0) >= 1
    families = list(DavCollector(dav.app[DAV_STATS]).samples())
    assert any(s.labels == {"method": "other", "status": "405"} for s in families[0].samples)


def test_dead_properties_are_bounded(dav: Dav) -> None:
    dav.request("PUT", "/team/big-props.txt", b"b")
    value = base64.b64encode(os.urandom(30_000)).decode()
    body = f'<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z"><D:set><D:prop><Z:big>{value}</Z:big></D:prop></D:set></D:propertyupdate>'
    assert dav.request("PROPPATCH", "/team/big-props.txt", body.encode())[0] == 507


def test_webdav_file_is_an_s3_object_and_back(dav: Dav) -> None:
    dav.request("PUT", "/team/both.txt", b"over dav", {"Content-Type": "text/plain"})
    info = dav.run(dav.storage.head_object("team", "both.txt"))
    assert info.content_type == "text/plain" and info.size == 8

    async def body() -> object:
        yield b"over s3"

    dav.run(dav.storage.put_object("team", "both.txt", body()))
    assert dav.request("GET", "/team/both.txt")[2] == b"over s3"
    assert re.fullmatch(r'"[0-9a-f]{32}"', dav.request("HEAD", "/team/both.txt")[1]["etag"])


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("evil.example", 403),
        ("evil.example:8080", 403),
        ("tunnelmesh.evil.example", 403),
        ("this.tunnelmesh:8080", 207),
        ("hub.tm", 207),
        ("127.0.0.1:8080", 207),
        ("[::1]:8080", 207),
    ],
)
def test_host_must_be_an_ip_or_a_mesh_name(dav: Dav, host: str, status: int) -> None:
    """A rebound DNS name must not let a browser on a peer act as that peer."""
    got = dav.request("PROPFIND", "/team/", None, {"Depth": "0", "Host": host})
    assert got[0] == status, got


def test_chunked_put_as_finder_sends_it(dav: Dav) -> None:
    """macOS Finder PUTs with Transfer-Encoding: chunked (no Content-Length)."""
    import http.client

    data = os.urandom(3 * 1024 * 1024 + 7)
    conn = http.client.HTTPConnection("127.0.0.1", dav.port, timeout=30)
    try:
        conn.putrequest("PUT", "/team/chunked.bin")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.putheader("X-Expected-Entity-Length", str(len(data)))
        conn.endheaders()
        for i in range(0, len(data), 65536):
            piece = data[i : i + 65536]
            conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        conn.send(b"0\r\n\r\n")
        assert conn.getresponse().status == 201
    finally:
        conn.close()
    assert dav.request("GET", "/team/chunked.bin")[2] == data


def test_propfind_of_a_large_directory_streams_every_entry(dav: Dav) -> None:
    dav.request("MKCOL", "/team/many/")

    async def put_many() -> None:
        async def empty() -> object:
            return
            yield b""

        for i in range(1300):
            await dav.storage.put_object("team", f"many/f{i:05d}", empty())

    dav.run(put_many())
    status, headers, body = dav.request("PROPFIND", "/team/many/", None, {"Depth": "1"})
    assert status == 207 and headers["dav"] == "1, 2"
    listing = ms(body)
    assert len(listing) == 1301
    assert "/team/many/f01299" in listing
