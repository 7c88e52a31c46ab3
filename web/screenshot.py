#!/usr/bin/env python3
"""A picture of the page as a visitor sees it (docs/browser.png), after a run or in the middle
of one.

Serves a built page (web/build.sh), opens it in headless Chromium on SwiftShader with the
given query (a run that starts itself), waits for the run to end (or, with --at, for the
training status line to match a regular expression) and takes a screenshot over the DevTools
protocol (Chromium's --screenshot fires at load, before any training). Needs
`pip install websocket-client`.

    python3 web/screenshot.py --out docs/browser.png \
        --query 'data=mnist&arch=cnn2&epochs=3&limit=6000&autostart=1&digit=3'
    python3 web/screenshot.py --out docs/browser.png --at 'epoch 2/3, step 2[0-9]/' \
        --query 'data=mnist&arch=cnn2&epochs=3&limit=3000&batch=64&autostart=1&digit=3'
"""

import argparse
import base64
import functools
import http.server
import json
import re
import subprocess
import tempfile
import threading
import time
import urllib.request

import websocket


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dist", default="web/dist", help="the built page (web/build.sh)")
    ap.add_argument("--query", default="data=mnist&arch=cnn2&epochs=2&limit=4000&autostart=1&digit=3")
    ap.add_argument("--out", default="docs/browser.png")
    ap.add_argument("--size", default="1280,1700", help="window width,height")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds to wait for the run")
    ap.add_argument("--chromium", default="chromium")
    ap.add_argument("--at", help="take the picture when the training status matches this regular expression "
                    "(e.g. mid-epoch) instead of at the end of the run")
    a = ap.parse_args()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=a.dist)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/?{a.query}"

    profile = tempfile.mkdtemp()
    port = 9333
    chrome = subprocess.Popen(
        [a.chromium, "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
         "--enable-unsafe-webgpu", "--enable-unsafe-swiftshader", "--use-webgpu-adapter=swiftshader",
         "--hide-scrollbars", f"--window-size={a.size}", f"--remote-debugging-port={port}", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
                page = next(t for t in targets if t["type"] == "page")
                break
            except Exception:
                time.sleep(0.2)
        ws = websocket.create_connection(page["webSocketDebuggerUrl"], suppress_origin=True)
        ids = iter(range(1, 1 << 30))

        def cdp(method, **params):
            i = next(ids)
            ws.send(json.dumps({"id": i, "method": method, "params": params}))
            while True:
                m = json.loads(ws.recv())
                if m.get("id") == i:
                    if "error" in m:
                        raise RuntimeError(f"{method}: {m['error']}")
                    return m["result"]

        start = time.time()
        status = ""
        while time.time() - start < a.timeout:
            r = cdp("Runtime.evaluate", expression="document.getElementById('train-status').textContent + '|' + "
                    "document.getElementById('guesses').textContent", returnByValue=True)
            status = r.get("result", {}).get("value") or ""  # nothing until the page has loaded
            if "error" in status.lower() or status.startswith("done") and status.split("|")[1]:
                break
            if a.at and re.search(a.at, status.split("|")[0]):
                break
            time.sleep(0.5 if a.at else 1)
        time.sleep(0 if a.at else 1)
        shot = cdp("Page.captureScreenshot", format="png")
        with open(a.out, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        print(f"{a.out}: {status.split('|')[0]} ({time.time() - start:.0f} s)")
    finally:
        chrome.kill()
        server.shutdown()


if __name__ == "__main__":
    main()
