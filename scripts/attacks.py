#!/usr/bin/env python3
"""Runs the hostile-caller checks of the hardening work against a real `ledge serve` on
loopback and prints what each attack got: the figures quoted in the issue notes.

Usage: scripts/attacks.py [ATTACK...]   (rate auth store component slowloris outbound; default all)
with LEDGE_BINARY=path (default target/release/ledge, else target/debug/ledge)

Needs the test guests built (`cargo test` builds them, or
`(cd tests/guests && cargo build --release)`). Every request goes to 127.0.0.0/8 only, every
loop is bounded in count and time, and the server is killed at the end.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUESTS = os.path.join(ROOT, "tests/guests/target/wasm32-wasip2/release")


def binary():
    if os.environ.get("LEDGE_BINARY"):
        return os.environ["LEDGE_BINARY"]
    for profile in ("release", "debug"):
        path = os.path.join(ROOT, "target", profile, "ledge")
        if os.path.exists(path):
            return path
    sys.exit("no ledge binary: build one (cargo build --release --bin ledge)")


class Server:
    def __init__(self, *extra, policy='public = true\n[rate]\nquota = 1000000\nwindow = "1s"\n'):
        self.dir = tempfile.mkdtemp(prefix="ledge-attacks-")
        policies = os.path.join(self.dir, "policies")
        os.makedirs(policies)
        with open(os.path.join(policies, "default.toml"), "w") as f:
            f.write(policy)
        self.process = subprocess.Popen(
            [binary(), "serve", "--listen", "127.0.0.1:0", "--data-dir", os.path.join(self.dir, "data"),
             "--policies", policies, *extra],
            stdout=subprocess.PIPE, stderr=open(os.path.join(self.dir, "log"), "w"), text=True)
        deadline = time.time() + 60
        for line in self.process.stdout:
            if line.startswith("ledge listening on "):
                self.url = line.split()[-1]
                break
            if time.time() > deadline:
                sys.exit("ledge did not start")
        with open(os.path.join(self.dir, "data", "admin.token")) as f:
            self.token = f.read().strip()

    def request(self, method, path, body=None, token=None, headers=None):
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def deploy(self, name, guest, policy=None):
        with open(os.path.join(GUESTS, f"{guest}.wasm"), "rb") as f:
            status, body = self.request("PUT", f"/v1/functions/{name}", f.read(), self.token)
        assert status in (200, 201), body
        if policy:
            status, body = self.request("PUT", f"/v1/functions/{name}/policy", policy.encode(), self.token)
            assert status == 204, body

    def mint(self, *caveats):
        command = [binary(), "token", "mint", "--data-dir", os.path.join(self.dir, "data")]
        for caveat in caveats:
            command += ["--caveat", caveat]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()

    def rss_mib(self):
        with open(f"/proc/{self.process.pid}/status") as f:
            line = next(l for l in f if l.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    def stop(self):
        self.process.kill()
        self.process.wait()


def attenuate(token, caveat):
    return subprocess.run([binary(), "token", "attenuate", token, "--caveat", caveat],
                          capture_output=True, text=True, check=True).stdout.strip()


def parallel(count, workers, work):
    """Runs work(i) for i in range(count) on `workers` threads; returns the results."""
    results = [None] * count
    next_index = iter(range(count))
    lock = threading.Lock()

    def run():
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            results[i] = work(i)

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def rate_caveat():
    server = Server(policy='public = false\n[rate]\nquota = 100\nwindow = "60s"\n')
    try:
        server.deploy("hello", "misbehave")
        token = attenuate(server.mint("fn = hello"), "rate = 5999/h")
        codes = [server.request("GET", "/fn/hello/fine", token=token)[0] for _ in range(300)]
        fresh = [server.request("GET", "/fn/hello/fine", token=attenuate(token, f"rate = {n}/h"))[0]
                 for n in range(1, 21)]
        print(f"1. rate = 5999/h token, 300 requests against the default 100/60s: "
              f"{codes.count(200)} allowed, {codes.count(429)} refused; then 20 fresh caveats "
              f"(1/h..20/h): {fresh.count(200)} allowed")
    finally:
        server.stop()


def failed_authentications():
    server = Server(policy='public = false\n')
    try:
        server.deploy("hello", "misbehave")
        missing = server.request("GET", "/fn/nothing/")
        private = server.request("GET", "/fn/hello/")
        started = time.time()
        codes = parallel(10_000, 8, lambda i: server.request("GET", "/fn/hello/fine", token=f"garbage{i}")[0])
        elapsed = time.time() - started
        print(f"6. 10,000 forged tokens from one address: {codes.count(401)} x 401, {codes.count(429)} x 429 "
              f"in {elapsed:.1f} s; missing vs private without a token: {missing[0]} / {private[0]}, "
              f"same detail: {missing[1] == private[1]}")
    finally:
        server.stop()


def store_memory():
    server = Server()
    try:
        server.deploy("hog", "misbehave")
        before = server.rss_mib()
        replies = parallel(300, 4, lambda i: server.request("GET", "/fn/hog/kv-hog")[1])
        peak = server.rss_mib()
        parallel(10_000, 8, lambda i: server.request("GET", "/fn/hog/kv-reads?n=1000")[1])
        fills = parallel(4, 4, lambda i: server.request("GET", "/fn/hog/kv-fill?kib=64")[1])
        after = server.rss_mib()
        status, metrics = server.request("GET", "/metrics", token=server.token)
        keyspace = next(l for l in metrics.decode().splitlines() if l.startswith('ledge_kv_keyspace_bytes{keyspace="f/hog/"}'))
        print(f"7. 300 requests each buffering writes until refused ({replies[0].decode().strip()[:60]}...), "
              f"10,000 reading 1,000 absent keys each, 4 filling the keyspace until refused "
              f"({fills[0].decode().strip()[:60]}...): server RSS {before:.0f} MiB before, {peak:.0f} after the "
              f"first wave, {after:.0f} at the end; {keyspace}")
    finally:
        server.stop()


def crafted_component():
    server = Server()
    try:
        module = bytes([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 5, 3, 1, 0, 1])
        instances = bytes([40] + [0, 0, 0] * 40)
        component = bytes([0, 0x61, 0x73, 0x6d, 0x0d, 0, 1, 0, 1, len(module)]) + module + \
            bytes([2, len(instances)]) + instances
        status, body = server.request("PUT", "/v1/functions/crafted", component, server.token)
        print(f"8. a component with 40 memories: {status} {json.loads(body)['detail']}")
    finally:
        server.stop()


def slowloris():
    server = Server("--max-connections-per-ip", "256", "--header-timeout", "10")
    try:
        server.deploy("hello", "misbehave")
        host, port = server.url.removeprefix("http://").split(":")
        held = []
        for _ in range(300):
            s = socket.socket()
            s.connect((host, int(port)))
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
            held.append(s)
        time.sleep(0.5)
        alive = 0
        for s in held:
            s.setblocking(False)
            try:
                alive += s.recv(1) != b""
            except BlockingIOError:
                alive += 1
            except ConnectionResetError:
                pass
        latencies = []
        for _ in range(200):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            started = time.time()
            s.connect((host, int(port)))
            s.sendall(b"GET /fn/hello/fine HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = s.recv(64)
            latencies.append((time.time() - started) * 1000)
            assert reply.startswith(b"HTTP/1.1 200"), reply
            s.close()
        latencies.sort()
        print(f"10. 300 slowloris connections from 127.0.0.1: {alive} kept (cap 256 per address); "
              f"200 requests from 127.0.0.2 meanwhile: p50 {latencies[100]:.1f} ms, p99 {latencies[198]:.1f} ms")
        for s in held:
            s.close()
    finally:
        server.stop()


def outbound():
    server = Server()
    try:
        port = server.url.rsplit(":", 1)[1]
        server.deploy("out", "misbehave", '[outbound]\nallow = ["localhost", "metadata.google.internal"]\n')
        by_name = server.request("GET", f"/fn/out/outbound?authority=localhost:{port}&path=/healthz")[1]
        metadata = server.request("GET", "/fn/out/outbound?authority=169.254.169.254&path=/")[1]
        print(f"11. outbound to localhost:{port} listed by name: {by_name.decode().strip()}; "
              f"to 169.254.169.254 (not listed): {metadata.decode().strip()}")
    finally:
        server.stop()


ATTACKS = {"rate": rate_caveat, "auth": failed_authentications, "store": store_memory,
           "component": crafted_component, "slowloris": slowloris, "outbound": outbound}

if __name__ == "__main__":
    for name in sys.argv[1:] or ATTACKS:
        ATTACKS[name]()
