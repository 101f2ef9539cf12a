"""CI: the installed wheel starts the daemon outside the checkout and serves a 201 meme, the
page and its files (package data the wheel must carry).

Run with the fresh virtual environment's python, from a directory outside the checkout, so
nothing can come from the source tree: ``venv/bin/python wheel_smoke.py``.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from memesys.testing.ports import free_port


def main() -> int:
    import memesys

    assert "site-packages" in memesys.__file__, f"memesys imported from {memesys.__file__}"
    port, admin_port = free_port(), free_port()
    work = tempfile.mkdtemp(prefix="memesys-wheel-")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    exe = os.path.join(os.path.dirname(sys.executable), "memesys")
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--admin-port",
            str(admin_port),
            "--data-dir",
            os.path.join(work, "data"),
        ],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        deadline = time.monotonic() + 60
        while "ready at" not in line and time.monotonic() < deadline and proc.poll() is None:
            print("  daemon:", line.rstrip())
            line = proc.stdout.readline()
        if "ready at" not in line:
            print("FAIL: the daemon did not become ready")
            return 1
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/memes",
            method="POST",
            data=json.dumps({"topic": "wheels"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            meme = json.load(answer)
            print(f"POST /v1/memes -> {answer.status}: {meme['format']}: {meme['top_text']!r}")
            if answer.status != 201:
                return 1
        for path, needle in (("/", b"/static/app.js"), ("/static/app.js", b"text/event-stream")):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
                body = answer.read()
                policy = answer.headers.get("Content-Security-Policy", "")
                print(f"GET {path} -> {answer.status}: {len(body)} bytes, CSP {policy[:24]!r}...")
                if answer.status != 200 or needle not in body or "default-src" not in policy:
                    print(f"FAIL: {path} is not the page's file")
                    return 1
        return 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
