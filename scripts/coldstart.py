#!/usr/bin/env python3
"""Cold-start timings for scripts/bench.sh (standard library only).

  coldstart.py restart LEDGE DATA_DIR FUNCTION POLICIES_DIR
                                                  time from `ledge serve` start to the first
                                                  200 from an already deployed FUNCTION
  coldstart.py deploy SERVER_URL NAME FILE TOKEN_FILE
                                                  time from the start of the upload to the
                                                  first 200 from the new function
  coldstart.py wasmtime WASMTIME FILE             time from `wasmtime serve FILE` start to its
                                                  first 200
  coldstart.py afterkill LEDGE DATA_DIR FUNCTION POLICIES_DIR SECONDS
                                                  serves DATA_DIR (FUNCTION deployed) under wrk
                                                  load on FUNCTION for SECONDS, SIGKILLs it, then
                                                  times start to the first 200; prints "WAL_MIB
                                                  START_MS COMMITS RECOVERY_MS": the log left,
                                                  and the commits the engine replayed from it and
                                                  how long that took (its "engine recovered" line)
  coldstart.py quantiles METRICS_URL FUNCTION     p50/p99 of warm instantiation (µs) from the
                                                  ledge_instantiation_duration_seconds histogram
  coldstart.py many LEDGE DATA_DIR POLICIES_DIR N FILE
                                                  deploys FILE as f0..f{N-1} on a fresh node,
                                                  stops it, and prints "START_MS RSS_MIB": process
                                                  start to the first 200 (from f{N-1}) and the
                                                  resident set right after
Prints one number (milliseconds) or "p50 p99" (microseconds).
"""
import http.client
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


def first_ok(host, port, path, proc=None, deadline_s=60.0):
    """Polls GET path every millisecond until it answers 200; returns the monotonic time. With
    `proc`, the server it waits for: if that exits first (its port taken, say), the answer would
    come from someone else, so it fails instead."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server for {host}:{port} exited ({proc.returncode}) before answering")
        try:
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.001)
    raise SystemExit(f"no 200 from {host}:{port}{path} within {deadline_s}s")


def restart(ledge, data_dir, function, policies):
    port = 18110
    started = time.monotonic()
    proc = subprocess.Popen([ledge, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir,
                             "--policies", policies],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready = first_ok("127.0.0.1", port, f"/fn/{function}/", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    print(f"{(ready - started) * 1000:.1f}")


def deploy(server, name, path, token_file):
    body = open(path, "rb").read()
    token = open(token_file).read().strip()
    host, port = server.removeprefix("http://").split(":")
    started = time.monotonic()
    request = urllib.request.Request(f"{server}/v1/functions/{name}", data=body, method="PUT",
                                     headers={"authorization": f"Bearer {token}"})
    urllib.request.urlopen(request).read()
    ready = first_ok(host, int(port), f"/fn/{name}/")
    print(f"{(ready - started) * 1000:.1f}")


def wasmtime(binary, path):
    port = 18111
    started = time.monotonic()
    proc = subprocess.Popen([binary, "serve", "-S", "cli", "--addr", f"127.0.0.1:{port}", path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready = first_ok("127.0.0.1", port, "/", proc)
    finally:
        proc.kill()
        proc.wait()
    print(f"{(ready - started) * 1000:.1f}")


def many(ledge, data_dir, policies, count, path):
    port = 18112
    body = open(path, "rb").read()
    proc = subprocess.Popen([ledge, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir,
                             "--policies", policies], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first_ok("127.0.0.1", port, "/healthz", proc)
        token = open(os.path.join(data_dir, "admin.token")).read().strip()
        deploying = time.monotonic()
        for i in range(int(count)):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/functions/f{i}", data=body, method="PUT",
                                             headers={"authorization": f"Bearer {token}"})
            while True:
                try:
                    urllib.request.urlopen(request).read()
                    break
                except urllib.error.HTTPError as error:
                    if error.code != 429:  # the admin quota: wait as told
                        raise
                    time.sleep(float(error.headers.get("retry-after", "1")))
        deploy_s = time.monotonic() - deploying
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    disk = sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(data_dir) for name in names)
    started = time.monotonic()
    proc = subprocess.Popen([ledge, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir,
                             "--policies", policies], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready = first_ok("127.0.0.1", port, f"/fn/f{int(count) - 1}/", proc)
        status = open(f"/proc/{proc.pid}/status").read()
        rss_kib = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    print(f"{(ready - started) * 1000:.1f} {rss_kib / 1024:.0f} {deploy_s:.1f} {disk / 2**20:.0f}")


def afterkill(ledge, data_dir, function, policies, seconds):
    port = 18113
    serve = [ledge, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir, "--policies", policies]
    proc = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        first_ok("127.0.0.1", port, "/healthz", proc)
        subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds}s", f"http://127.0.0.1:{port}/fn/{function}/"],
                       stdout=subprocess.DEVNULL, check=True)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    kv = os.path.join(data_dir, "kv")
    wal_bytes = sum(os.path.getsize(os.path.join(kv, name)) for name in os.listdir(kv) if name.startswith("wal-"))
    with tempfile.TemporaryFile() as log:
        started = time.monotonic()
        proc = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=log)
        try:
            ready = first_ok("127.0.0.1", port, f"/fn/{function}/", proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
        log.seek(0)
        text = log.read().decode(errors="replace")
    line = next((line for line in text.splitlines() if "engine recovered" in line), "")
    found = re.search(r"commits=(\d+).*took_us=(\d+)", line)
    if found is None:
        raise SystemExit(f"no `engine recovered` line in the server's log: {text[-2000:]}")
    commits, took_us = int(found.group(1)), int(found.group(2))
    print(f"{wal_bytes / (1 << 20):.1f} {(ready - started) * 1000:.1f} {commits} {took_us / 1000:.1f}")


def quantiles(metrics_url, function):
    text = urllib.request.urlopen(metrics_url).read().decode()
    pattern = re.compile(
        r'^ledge_instantiation_duration_seconds_bucket\{le="([^"]+)",function="%s",start="warm"\} (\S+)$'
        % re.escape(function))
    buckets = [(float("inf") if le == "+Inf" else float(le), float(n))
               for le, n in (m.groups() for m in map(pattern.match, text.splitlines()) if m)]
    total = buckets[-1][1]

    def quantile(q):
        rank, lower, below = q * total, 0.0, 0.0
        for upper, count in buckets:
            if count >= rank:
                if upper == float("inf"):
                    return lower
                # Linear interpolation inside the bucket, as Prometheus' histogram_quantile.
                return lower + (upper - lower) * (rank - below) / max(count - below, 1)
            lower, below = upper, count
        return lower

    print(f"{quantile(0.5) * 1e6:.1f} {quantile(0.99) * 1e6:.1f}")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    commands = {"restart": restart, "deploy": deploy, "wasmtime": wasmtime, "quantiles": quantiles, "many": many,
                "afterkill": afterkill}
    commands[command](*args)
