"""The dashboard's storage pages go through the S3 plugin's own API, as the browser's peer.

A coordinator with S3 and the dashboard over loopback (mesh 127.77.0.0/16, see
tunnelmesh_admin.testing): the admin creates a bucket with the CLI's own path (S3 over HTTPS with
its own credential), then through the dashboard lists it, uploads, downloads and deletes an
object; a member (no grant) is refused by S3 itself, and gets 403 from the dashboard for a
cross-origin upload before S3 is asked. No response carries an S3 secret.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytest.importorskip("tunnelmesh_s3")
pytest.importorskip("tunnelmesh_admin")

from tunnelmesh_admin.s3view import S3Credential, sign
from tunnelmesh_admin.testing import running_mesh
from tunnelmesh_s3.config import S3Section
from tunnelmesh_s3.mesh import SERVICE_KEY as S3_KEY


def test_buckets_and_objects_through_the_dashboard(tmp_path: Path) -> None:
    async def main() -> None:
        sections = {"s3": S3Section(enabled=True, listen="127.0.0.1:0")}
        async with running_mesh(tmp_path, sections=sections) as mesh:
            assert mesh.server._runner is not None
            s3 = mesh.server._runner.app[S3_KEY]
            await asyncio.wait_for(s3.listening.wait(), 20)
            admin = mesh.browser(mesh.mesh_ip(mesh.callers.admin))
            member = mesh.browser(mesh.mesh_ip(mesh.callers.peer))
            # the admin's own credential, as `tunnelmesh s3 credentials` gets it
            cred = await mesh.callers.admin.request("POST", "/api/v1/s3/credentials", {})
            own = S3Credential(
                cred["access_key"], cred["secret_key"], cred["endpoint"], "us-east-1"
            )
            url = own.endpoint + "/team"
            headers = sign(own, "PUT", url, payload_sha256=_EMPTY)
            async with mesh.callers.http.put(url, headers=headers) as resp:
                assert resp.status == 200, await resp.text()

            status, _, page = await admin.call("GET", "/s3")
            assert status == 200, page
            assert b'href="/s3/team"' in page and b'href="/s3"' in page  # listed, in the nav
            status, _, body = await admin.call(
                "PUT",
                "/s3/team/object?key=notes/a.txt",
                headers={"Content-Type": "text/plain"},
                json=None,
                data=b"hello over the mesh",
            )
            assert status == 200, body
            status, _, page = await admin.call("GET", "/s3/team?prefix=notes/")
            assert b"notes/a.txt" in page
            status, headers, body = await admin.call("GET", "/s3/team/object?key=notes/a.txt")
            assert status == 200 and body == b"hello over the mesh"
            assert headers["Content-Disposition"] == 'attachment; filename="a.txt"'

            # a member without a grant: S3 refuses it, through the dashboard too
            status, _, body = await member.call("GET", "/s3/team")
            assert status == 403 and b"AccessDenied" in body, body
            status, _, body = await member.call(
                "PUT", "/s3/team/object?key=x", data=b"nope", origin="https://evil.example"
            )
            assert status == 403 and b"cross_origin" in body
            status, _, body = await member.call("PUT", "/s3/team/object?key=x", data=b"nope")
            assert status == 403 and b"AccessDenied" in body

            status, _, _ = await admin.call("DELETE", "/s3/team/object?key=notes/a.txt")
            assert status == 200
            status, _, page = await admin.call("GET", "/s3/team?prefix=notes/")
            assert b"notes/a.txt" not in page
            for b in (admin, member):
                for path in ("/s3", "/s3/team"):
                    _, _, page = await b.call("GET", path)
                    assert cred["secret_key"].encode() not in page

    asyncio.run(asyncio.wait_for(main(), 120))


_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
