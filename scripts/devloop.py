#!/usr/bin/env python3
"""Measures the function author's loop: for each template language, the time from saving an
edit to the first response that shows it under `ledge dev`, over 5 edits (median, min, max).

Usage: scripts/devloop.py [rust python js]   (default all three; uses target/release/ledge if
built, else target/debug/ledge; componentize-py and componentize-js from scripts/setup.sh).
Everything runs on 127.0.0.1 and stops by itself.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = {"rust": ("src/lib.rs", '"{} from'), "python": ("app.py", '"{} from'), "js": ("app.js", "'{} from")}
WORDS = ["Hello", "Howdy", "Hi", "Hey", "Greetings", "Salut"]


def ledge():
    for profile in ("release", "debug"):
        path = os.path.join(ROOT, "target", profile, "ledge")
        if os.path.exists(path):
            return path
    sys.exit("build ledge first (cargo build --release --bin ledge)")


def measure(lang):
    work = tempfile.mkdtemp(prefix=f"devloop-{lang}-")
    name = f"loop-{lang}"
    subprocess.run([ledge(), "new", name, "--lang", lang, "--dir", work], check=True, capture_output=True)
    project = os.path.join(work, name)
    env = dict(os.environ, LEDGE_LOG="warn",
               PATH=f"{ROOT}/target/pyenv/bin:{ROOT}/target/node/node_modules/.bin:{os.environ['PATH']}")
    dev = subprocess.Popen([ledge(), "dev", project, "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True, env=env)
    lines = []
    threading.Thread(target=lambda: [lines.append(l) for l in dev.stdout], daemon=True).start()

    def wait(prefix, timeout=600):
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = [l for l in lines if l.startswith(prefix)]
            if found:
                return found[0]
            time.sleep(0.05)
        sys.exit(f"{lang}: never saw {prefix!r}:\n{''.join(lines)}")

    url = wait("ledge dev listening on ").split()[4] + f"/fn/{name}/"
    wait(f"{name}: version 1 live")
    path, pattern = SOURCES[lang]
    source = os.path.join(project, path)
    timings = []
    try:
        for before, after in zip(WORDS, WORDS[1:]):
            with open(source) as f:
                text = f.read()
            saved = time.time()
            with open(source, "w") as f:
                f.write(text.replace(pattern.format(before), pattern.format(after)))
            while True:
                try:
                    body = urllib.request.urlopen(url, timeout=10).read().decode()
                except OSError:
                    body = ""
                if body.startswith(f"{after} from"):
                    break
                if time.time() - saved > 600:
                    sys.exit(f"{lang}: the edit never showed")
                time.sleep(0.02)
            timings.append(time.time() - saved)
    finally:
        dev.kill()
        dev.wait()
    print(f"{lang}: save -> new response over {len(timings)} edits: median {statistics.median(timings):.2f} s, "
          f"min {min(timings):.2f} s, max {max(timings):.2f} s")


if __name__ == "__main__":
    for lang in sys.argv[1:] or ["rust", "python", "js"]:
        measure(lang)
