"""A headless Chromium for tests, driven by Playwright, taking commands as JSON lines.

Run it where the browser should be (inside a lab peer's namespace)::

    python -m tunnelmesh_admin.browser https://this.tm/

It starts Debian's ``/usr/bin/chromium`` (``TUNNELMESH_CHROMIUM`` moves it; Playwright never
downloads a browser here), opens one page, prints ``{"ready": true}`` and then answers one JSON
line on stdout for each JSON command line on stdin (``{"op": "goto", "url": "/peers"}``, see
:data:`OPS`). Every request the page makes goes through a route handler: a request for another
origin is aborted and recorded (``report`` lists them), as are console errors, page errors and
Content-Security-Policy violations.

The trust store is the browser's own (NSS, ``$HOME/.pki/nssdb``): the caller imports the mesh
CA there with ``certutil`` before starting it.
"""

from __future__ import annotations

import html
import json
import os
import sys
import time
import traceback
from typing import Any
from urllib.parse import urlsplit

__all__ = ["CHROMIUM_FLAGS", "OPS", "main"]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Records Content-Security-Policy violations; runs before any page script (Playwright injects it
# through the DevTools protocol, so the page's CSP does not apply to it).
_CSP_WATCH = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI);
});
"""

OPS = (
    "goto",
    "text",
    "attr",
    "count",
    "fill",
    "select",
    "click",
    "submit",
    "wait_text",
    "wait_attr",
    "screenshot",
    "fetch",
    "foreign_form",
    "report",
    "quit",
)


def main(argv: list[str]) -> int:
    # the test extra (the typecheck session installs only the plugin's own dependencies)
    from playwright.sync_api import sync_playwright  # type: ignore[import-not-found,unused-ignore]

    base = argv[1].rstrip("/")
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(base))
    errors: list[str] = []
    off_origin: list[str] = []
    requests: list[str] = []
    executable = os.environ.get("TUNNELMESH_CHROMIUM", "/usr/bin/chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1360, "height": 860})
        page = context.new_page()
        page.add_init_script(_CSP_WATCH)

        def route(r: Any) -> None:
            url = r.request.url
            requests.append(url)
            if not (url == origin or url.startswith(origin + "/")):
                off_origin.append(url)
                r.abort()
            else:
                r.continue_()

        context.route("**/*", route)
        page.on(
            "console",
            lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
        )
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            cmd = json.loads(line)
            op = cmd.pop("op")
            try:
                result = _run(page, base, op, cmd, errors, off_origin, requests)
            except Exception as exc:  # reported to the test, which fails with it
                result = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
            print(json.dumps(result), flush=True)
            if op == "quit":
                break
        context.close()
        browser.close()
    return 0


def _run(
    page: Any,
    base: str,
    op: str,
    cmd: dict[str, Any],
    errors: list[str],
    off_origin: list[str],
    requests: list[str],
) -> dict[str, Any]:
    timeout = float(cmd.get("timeout", 10.0)) * 1000
    sel = cmd.get("selector", "")
    if op == "goto":
        resp = page.goto(base + cmd["url"], wait_until="load", timeout=timeout)
        if cmd.get("live", True):  # the live feed is connected
            page.wait_for_selector("#live.on", timeout=timeout)
        return {"status": resp.status if resp else 0, "url": page.url}
    if op == "text":
        return {"text": page.inner_text(sel, timeout=timeout)}
    if op == "attr":
        return {"value": page.get_attribute(sel, cmd["name"], timeout=timeout)}
    if op == "count":
        return {"count": page.locator(sel).count()}
    if op == "fill":
        page.fill(sel, str(cmd["value"]), timeout=timeout)
        return {}
    if op == "select":
        page.select_option(sel, cmd["value"], timeout=timeout)
        return {}
    if op in ("click", "submit"):
        page.click(sel, timeout=timeout)
        return {}
    if op == "wait_text":
        started = time.monotonic()
        page.wait_for_function(
            "([sel, text]) => { const e = document.querySelector(sel);"
            " return e && e.innerText.includes(text); }",
            arg=[sel, cmd["text"]],
            timeout=timeout,
        )
        return {"seconds": time.monotonic() - started}
    if op == "wait_attr":
        started = time.monotonic()
        page.wait_for_function(
            "([sel, name, min]) => { const e = document.querySelector(sel);"
            " return e && Number(e.getAttribute(name)) > min; }",
            arg=[sel, cmd["name"], float(cmd.get("above", 0))],
            timeout=timeout,
        )
        return {"seconds": time.monotonic() - started}
    if op == "screenshot":
        page.screenshot(path=cmd["path"], full_page=True)
        return {"path": cmd["path"]}
    if op == "fetch":
        # as the page's own script would: same origin, the browser's own headers
        return dict(
            page.evaluate(
                "async ([method, path, body]) => {"
                " const init = {method, headers: {}};"
                " if (body !== null) { init.headers['Content-Type'] = 'application/json';"
                "   init.body = JSON.stringify(body); }"
                " const r = await fetch(path, init);"
                " return {status: r.status, body: await r.text()}; }",
                [cmd["method"], cmd["path"], cmd.get("body")],
            )
        )
    if op == "foreign_form":
        # a page of no origin (about:blank with our own markup, as another site would serve it)
        # posts a form to the dashboard: the browser sends Origin: null, Sec-Fetch-Site
        # cross-site
        fields = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in cmd["fields"].items()
        )
        page.set_content(
            f'<form id="f" method="post" enctype="text/plain" action="{base}{cmd["path"]}">'
            f'{fields}<button id="go">go</button></form>'
        )
        with page.expect_navigation(timeout=timeout) as nav:
            page.click("#go")
        resp = nav.value
        return {"status": resp.status if resp else 0, "body": page.inner_text("body")}
    if op == "report":
        csp = page.evaluate("window.__cspViolations || []")
        return {
            "errors": list(errors),
            "csp": csp,
            "off_origin": list(off_origin),
            "requests": len(requests),
        }
    if op == "quit":
        return {}
    return {"error": f"unknown op {op!r} (known: {', '.join(OPS)})"}


if __name__ == "__main__":
    sys.exit(main(sys.argv))
