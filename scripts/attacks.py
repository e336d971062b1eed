#!/usr/bin/env python3
"""Runs the hostile-caller checks of the hardening work against a real `ledge serve` on
loopback and prints what each attack got: the figures quoted in the issue notes.

Usage: scripts/attacks.py [ATTACK...]   (rate auth store component slowloris outbound logs dev
buffers revoke widen headers traces paths modes full proxy-host
proxy-conns; default all; the last two need etcd)
with LEDGE_BINARY=path (default target/release/ledge, else target/debug/ledge)

Needs the test guests built (`cargo test` builds them, or
`(cd tests/guests && cargo build --release)`). Every request goes to 127.0.0.0/8 only, every
loop is bounded in count and time, and the server is killed at the end.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
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


def controls(text):
    """The control characters (C0 but newline, DEL, C1) in `text`, as their code points."""
    return [f"U+{ord(c):04X}" for c in text if unicodedata.category(c) == "Cc" and c != "\n"]


def logs_escapes():
    # What misbehave's /escapes prints: OSC 52 (clipboard), cursor up, CR, C1 CSI, DEL, tab, backslash.
    printed = "clip\x1b]52;c;bGVkZ2U=\x07 up\x1b[2A hidden\rshown \x9b31mred\x7f tab\tback\\slash"
    server = Server()
    try:
        server.deploy("loud", "misbehave")
        server.request("GET", "/fn/loud/escapes")
        env = dict(os.environ, LEDGE_SERVER=server.url, LEDGE_TOKEN=server.token)

        def logs(*flags):
            return subprocess.run([binary(), "logs", "loud", *flags], capture_output=True, env=env,
                                  check=True).stdout.decode()

        shown, raw, lines = logs(), logs("--raw"), logs("--json")
        line = next(l for l in shown.splitlines() if " stdout: " in l).split(" stdout: ", 1)[1]
        text = next(e["text"] for e in map(json.loads, lines.splitlines()) if e["kind"] == "stdout")
        print(f"14. a guest printing escape sequences, then `ledge logs`: raw ESC in the output: "
              f"{chr(27) in shown}, control characters {controls(shown) or 'none'}; the line reads {repr(line) if controls(line) else line}; "
              f"--raw: raw ESC {chr(27) in raw}, exact {printed in raw}; --json: control characters "
              f"{controls(lines) or 'none'}, text exact {text == printed}")
    finally:
        server.stop()


# `ledge dev` (item 16): its own process, serving a project folder whose build is `true` and
# whose component is misbehave, private, with a route; it lets this machine invoke without a
# token, so a web page on another site must not be able to.

class DevServer(Server):
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ledge-attacks-dev-")
        shutil.copy(os.path.join(GUESTS, "misbehave.wasm"), os.path.join(self.dir, "app.wasm"))
        with open(os.path.join(self.dir, "ledge.toml"), "w") as f:
            f.write('[[function]]\nname = "app"\nbuild = "true"\ncomponent = "app.wasm"\n'
                    '[[function.policy.route]]\npath = "/app"\n')
        self.process = subprocess.Popen(
            [binary(), "dev", self.dir, "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
            stderr=open(os.path.join(self.dir, "log"), "w"), text=True, env=dict(os.environ, LEDGE_LOG="warn"))
        deadline = time.time() + 60
        self.url = None
        for line in self.process.stdout:
            if line.startswith("ledge dev listening on "):
                self.url = line.split()[4]
            if line.startswith("app: version 1 live"):
                break
            if time.time() > deadline:
                self.stop()
                sys.exit("ledge dev did not start")


def dev_cross_site():
    server = DevServer()
    try:
        def status(method, path, **headers):
            return server.request(method, path, b"" if method == "POST" else None, headers=headers)

        post, detail = status("POST", "/fn/app/", Origin="http://evil.example")
        others = {
            "GET": status("GET", "/fn/app/", Origin="http://evil.example")[0],
            "Origin null": status("POST", "/fn/app/", Origin="null")[0],
            "a link from another site (Sec-Fetch-Site, no Origin)":
                status("GET", "/fn/app/", **{"Sec-Fetch-Site": "cross-site"})[0],
            "the routed /app": status("POST", "/app/x", Origin="http://evil.example")[0],
            "a frontend on http://localhost:5173": status("POST", "/fn/app/", Origin="http://localhost:5173")[0],
            "curl (no Origin)": status("POST", "/fn/app/")[0],
        }
        print(f"16. `ledge dev`, a page on http://evil.example POSTing to /fn/app/ (a private function): {post} "
              f"({json.loads(detail)['detail'] if post != 200 else detail.decode().strip()}); "
              + ", ".join(f"{what}: {code}" for what, code in others.items()))
    finally:
        server.stop()


# Open transactions (item 6): their buffered writes live in host memory, outside the guest's
# `[limits] memory`. All of one instance's transactions share 16 MiB, all instances together
# `--kv-write-buffers` (default 256 MiB).

def write_buffers():
    server = Server()
    try:
        server.deploy("hog", "misbehave")
        before = server.rss_mib()
        # Four instances at once, each asking for 480 MiB across its open transactions.
        greedy = parallel(4, 4, lambda i: server.request("GET", "/fn/hog/kv-hold?kib=491520")[1].decode().strip())
        # 32 instances at once, each holding 16,000 KiB (within its own budget) until released.
        holders = []
        thread = threading.Thread(target=lambda: holders.extend(parallel(
            32, 32, lambda i: server.request("GET", f"/fn/hog/kv-hold?kib=16000&id={i}")[1].decode().strip())))
        thread.start()
        deadline, held = time.time() + 6, "Ok(0)"
        while time.time() < deadline:
            held = server.request("GET", "/fn/hog/kv-held")[1].decode().strip()
            if held == "Ok(16)":
                break
            time.sleep(0.05)
        holding = server.rss_mib()
        server.request("GET", "/fn/hog/kv-release")
        thread.join()
        after = server.rss_mib()
        with open(f"/proc/{server.process.pid}/status") as f:
            peak = int(next(l for l in f if l.startswith("VmHWM:")).split()[1]) / 1024
        refused = [h for h in holders if "then:" in h]
        print(f"write buffers (item 6): 4 instances at once each asking for 480 MiB in open transactions: "
              f"{greedy[0][:90]}...; 32 instances each holding 16,000 KiB until released: "
              f"{len(holders) - len(refused)} held ({held} marked), {len(refused)} refused "
              f"({refused[0].split('then: ', 1)[1][:150] if refused else '-'}...); server RSS {before:.0f} MiB "
              f"before, {holding:.0f} while held, {after:.0f} after, peak {peak:.0f}")
    finally:
        server.stop()


# Isolation, round two: tokens narrowed for someone else, deploy-only and confined tokens
# sending policies, forged ledge headers, trace ids, path prefixes, files in the data dir.
EXAMPLES = os.path.join(ROOT, "functions/target/wasm32-wasip2/release")


def deploy_example(server, name, example, policy=None):
    with open(os.path.join(EXAMPLES, f"{example}.wasm"), "rb") as f:
        status, body = server.request("PUT", f"/v1/functions/{name}", f.read(), server.token)
    assert status in (200, 201), body
    if policy:
        status, body = server.request("PUT", f"/v1/functions/{name}/policy", policy.encode(), server.token)
        assert status == 204, body


def revoke(server, token):
    return subprocess.run([binary(), "token", "revoke", token], capture_output=True, text=True,
                          env={**os.environ, "LEDGE_SERVER": server.url, "LEDGE_TOKEN": server.token})


def revoke_a_branch():
    server = Server(policy='public = false\n[rate]\nquota = 1000000\nwindow = "1s"\n')
    try:
        server.deploy("hello", "misbehave")
        ci = attenuate(server.token, "fn = hello")
        sibling = attenuate(server.token, "method = GET")
        revoked = revoke(server, ci)
        ci_after = server.request("GET", "/fn/hello/fine", token=ci)[0]
        admin_after = server.request("GET", "/v1/functions", token=server.token)[0]
        sibling_after = server.request("GET", "/fn/hello/fine", token=sibling)[0]
        print(f"2. the admin token narrowed for a CI job, revoked ({revoked.stdout.strip() or revoked.stderr.strip()}): "
              f"the CI token {ci_after}, the admin token {admin_after}, a sibling branch {sibling_after}")
        narrowed = server.mint("method = GET")
        status, body = server.request("GET", "/v1/backup", token=narrowed)
        print(f"13. GET /v1/backup with a manage token narrowed to `method = GET`: {status} "
              f"({json.loads(body).get('detail', '')[:90] if status != 200 else f'{len(body)} bytes, the root keys in it'})")
    finally:
        server.stop()


def widen_policies():
    server = Server()
    try:
        ci = server.mint("op = deploy")
        with open(os.path.join(GUESTS, "misbehave.wasm"), "rb") as f:
            component = f.read()
        boundary = "ledgeattack"
        policy = 'public = true\n[outbound]\nallow = ["169.254.169.254"]\n'
        body = (f"--{boundary}\r\ncontent-disposition: form-data; name=\"component\"\r\n\r\n").encode() + component + (
            f"\r\n--{boundary}\r\ncontent-disposition: form-data; name=\"policy\"\r\n\r\n{policy}\r\n--{boundary}--\r\n").encode()
        status, answer = server.request("PUT", "/v1/functions/app", body, ci,
                                        {"content-type": f"multipart/form-data; boundary={boundary}"})
        print(f"3. a deploy-only token deploying with `public = true` and outbound 169.254.169.254: {status} "
              f"({json.loads(answer).get('detail', '')[:110] if status >= 400 else 'deployed'})")
        server.deploy("hello", "misbehave", 'public = false\n[rate]\nquota = 10\nwindow = "60s"\n')
        confined = server.mint("fn = hello")
        results = []
        for added in ('[record]\nsample = 1.0\nmax_trace_bytes = "1GiB"\n', "[versions]\nkeep = 100\n"):
            text = f'public = false\n[rate]\nquota = 10\nwindow = "60s"\n{added}'
            status, answer = server.request("PUT", "/v1/functions/hello/policy", text.encode(), confined)
            results.append(f"{added.split(chr(10))[1]}: {status}")
        status, answer = server.request("PUT", "/v1/functions/hello/policy", b"[record]\nmax_traces = 1000000\n",
                                        server.token)
        print(f"4. a function-scoped token raising {'; '.join(results)}; the admin setting max_traces = 1000000: "
              f"{status} ({json.loads(answer).get('detail', '')[:100] if status >= 400 else 'applied'})")
    finally:
        server.stop()


def forged_headers():
    server = Server()
    try:
        deploy_example(server, "echo", "echo")
        status, _ = server.request("GET", "/fn/echo/", headers={"ledge-schedule": "1", "ledge-queue": "orders"})
        request = urllib.request.Request(server.url + "/fn/echo/", headers={"ledge-schedule": "1", "ledge-queue": "orders"})
        with urllib.request.urlopen(request, timeout=60) as response:
            seen = [k for k in response.headers.keys() if k.lower().startswith("x-echo-header-ledge-")]
        print(f"10. a caller sending `ledge-schedule: 1` and `ledge-queue`: {status}; ledge headers the guest saw: {seen or 'none'}")
    finally:
        server.stop()


def trace_oracle():
    server = Server()
    try:
        server.deploy("counter", "misbehave")
        server.deploy("other", "misbehave")
        status, _ = server.request("GET", "/fn/counter/trap", token=server.token, headers={"ledge-record": "1"})
        deadline, trace = time.time() + 10, None
        while time.time() < deadline and not trace:
            listed = json.loads(server.request("GET", "/v1/traces?function=counter", token=server.token)[1])
            trace = listed["traces"][0]["id"] if listed["traces"] else None
            time.sleep(0.05)
        other = server.mint("fn = other")
        absent = trace[:-1] + ("1" if trace[-1] == "0" else "0")
        answers = [server.request("GET", f"/v1/traces/{t}", token=other) for t in (trace, absent)]
        same = answers[0][1].replace(trace.encode(), b"ID") == answers[1][1].replace(absent.encode(), b"ID")
        print(f"15. another function's token reading an existing trace: {answers[0][0]}, a made-up id: "
              f"{answers[1][0]}; same answer: {same}")
    finally:
        server.stop()


def path_prefixes():
    server = Server(policy='public = false\n[rate]\nquota = 1000000\nwindow = "1s"\n')
    try:
        deploy_example(server, "echo", "echo")
        token = server.mint("fn = echo", "path-prefix = /api")
        results = []
        for path in ("/fn/echo/apix", "/fn/echo/api/..%2Fadmin", "/fn/echo/api/x"):
            with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as conn:
                conn.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n".encode())
                results.append(f"{path} {conn.recv(64).split(b' ')[1].decode()}")
        print(f"17. a `path-prefix = /api` token: {', '.join(results)}")
    finally:
        server.stop()


def data_dir_modes():
    server = Server()
    try:
        server.deploy("filler", "misbehave", 'public = true\n[rate]\nquota = 1000000\nwindow = "1s"\n[record]\nsample = 1.0\n')
        server.request("GET", "/fn/filler/kv-fill?kib=64")
        time.sleep(0.5)
        wide = []
        for folder, dirs, files in os.walk(os.path.join(server.dir, "data")):
            for name in dirs + files:
                mode = os.lstat(os.path.join(folder, name)).st_mode & 0o777
                if mode not in (0o600, 0o700):
                    wide.append(f"{os.path.relpath(os.path.join(folder, name), server.dir)} {mode:o}")
        print(f"18. files and folders under the data dir readable by others after a workload: {wide or 'none'}")
    finally:
        server.stop()


def full_engine_revocation():
    server = Server("--kv-max-bytes", "1048576")
    try:
        server.deploy("filler", "misbehave")
        filled = server.request("GET", "/fn/filler/kv-fill?kib=4")[1].decode().strip()
        token = server.mint("op in manage")
        revoked = revoke(server, token)
        after = server.request("GET", "/v1/functions", token=token)[0]
        print(f"1. a revoke on a node whose engine guests filled ({filled[-60:]}): exit {revoked.returncode}, "
              f"the token then gets {after}")
    finally:
        server.stop()


ISOLATION = {"revoke": revoke_a_branch, "widen": widen_policies, "headers": forged_headers,
             "traces": trace_oracle, "paths": path_prefixes, "modes": data_dir_modes,
             "full": full_engine_revocation}


# Proxying between cluster nodes (items 11 and 12): a request for a function another node hosts
# goes there in one hop. Needs etcd (Debian's etcd-server, as the cluster tests); without it
# these attacks say so and are skipped. One etcd member and two ledge nodes, all on loopback.

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Etcd:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ledge-attacks-etcd-")
        client, peer = free_port(), free_port()
        self.endpoint = f"http://127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        self.process = subprocess.Popen(
            ["etcd", "--name", "e0", "--data-dir", os.path.join(self.dir, "e0"),
             "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
             "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
             "--initial-cluster", f"e0={peer_url}", "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "log"), "w"))
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(self.endpoint + "/health", timeout=1) as response:
                    if b'"health":"true"' in response.read():
                        return
            except OSError:
                pass
            if time.time() > deadline:
                self.stop()
                sys.exit("etcd did not become healthy")
            time.sleep(0.1)

    def stop(self):
        self.process.kill()
        self.process.wait()


def cluster(*extra):
    """An etcd and nodes `a` and `b` on it (with `extra` serve flags), or None without etcd."""
    if not shutil.which("etcd"):
        return None
    etcd = Etcd()
    nodes = [Server("--cluster", etcd.endpoint, "--node-name", name, *extra) for name in ("a", "b")]
    return etcd, nodes


def stop_cluster(etcd, nodes):
    for node in nodes:
        node.stop()
    etcd.stop()


def get_from(url, path, source="127.0.0.1", headers=()):
    """A GET of `path` from `source`, byte for byte: (status, {header: value}) or None when the
    server closes the connection without an answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as s:
        s.settimeout(30)
        s.bind((source, 0))
        s.connect((host, int(port)))
        head = "".join(f"{name}: {value}\r\n" for name, value in headers)
        if not any(name.lower() == "host" for name, _ in headers):
            head += f"Host: {host}:{port}\r\n"
        s.sendall(f"GET {path} HTTP/1.1\r\n{head}Connection: close\r\n\r\n".encode())
        response = b""
        try:
            while chunk := s.recv(65536):
                response += chunk
        except ConnectionResetError:
            pass
    if not response.startswith(b"HTTP/1.1 "):
        return None
    lines = response.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
    fields = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0][9:12]), fields


def placed(nodes, name, path="/"):
    """(host, other): the node that runs `name` (its `ledge-node`) and the one that proxies it."""
    deadline = time.time() + 30
    while time.time() < deadline:
        answers = [get_from(node.url, f"/fn/{name}{path}") for node in nodes]
        hosts = {answer[1].get("ledge-node") for answer in answers if answer and answer[0] < 300}
        if len(hosts) == 1 and None not in hosts and all(answer and answer[0] < 300 for answer in answers):
            host = next(iter(hosts))
            by_name = dict(zip("ab", nodes))
            return by_name[host], by_name["b" if host == "a" else "a"]
        time.sleep(0.2)
    sys.exit(f"{name} was not placed")


def proxied_host():
    started = cluster()
    if not started:
        return print("cluster 11. skipped: etcd is not installed (Debian's etcd-server)")
    etcd, nodes = started
    try:
        nodes[0].deploy("site", "plain_wasi",
                        '[placement]\nreplicas = 1\n[[route]]\nhost = "api.a.test"\n')
        host, other = placed(nodes, "site")
        routed = get_from(other.url, "/v2/items?q=1", headers=[("Host", "api.a.test")])
        status, seen = routed if routed else (None, {})
        now = int(time.time())
        forged = f"a;{now};203.0.113.7;https;api.a.test;{'00' * 32}"
        direct = get_from(host.url, "/fn/site/x", headers=[("ledge-peer", forged)])
        unrouted = get_from(host.url, "/v2/items", headers=[("Host", "other.test"), ("ledge-peer", forged)])
        print(f"cluster 11. `Host: api.a.test` (a route of a function on the other node) to the node that "
              f"does not host it: {status}, run on {seen.get('ledge-node')}, the guest saw authority "
              f"{seen.get('x-authority')!r} and scheme {seen.get('x-scheme')!r}; a forged ledge-peer header "
              f"claiming https://api.a.test sent to the host: the guest saw {direct[1].get('x-authority')!r} "
              f"over {direct[1].get('x-scheme')!r}, and with `Host: other.test` it routed to {unrouted[0]}")
    finally:
        stop_cluster(etcd, nodes)


def proxied_connections():
    per_ip = 8
    started = cluster("--max-connections-per-ip", str(per_ip))
    if not started:
        return print("cluster 12. skipped: etcd is not installed (Debian's etcd-server)")
    etcd, nodes = started
    try:
        nodes[0].deploy("slow", "misbehave", "[placement]\nreplicas = 1\n")
        host, proxy = placed(nodes, "slow", "/fine")
        slow = [None] * per_ip

        def hold(i):
            slow[i] = get_from(proxy.url, "/fn/slow/slow-write?ms=3000", source="127.0.0.3")

        threads = [threading.Thread(target=hold, args=(i,)) for i in range(per_ip)]
        for t in threads:
            t.start()
        time.sleep(1)
        started_at = time.time()
        other = get_from(proxy.url, "/fn/slow/fine", source="127.0.0.4")
        took = (time.time() - started_at) * 1000
        greedy_direct = get_from(host.url, "/fn/slow/fine", source="127.0.0.3")
        for t in threads:
            t.join()
        held = sum(1 for answer in slow if answer and answer[0] == 200)
        print(f"cluster 12. one client (127.0.0.3) holding {per_ip} slow requests through the proxying node "
              f"(--max-connections-per-ip {per_ip}), {held} of them served by the host; meanwhile another "
              f"client's request through the same proxy: {other[0] if other else 'refused'} in {took:.0f} ms, "
              f"run on {other[1].get('ledge-node') if other else '-'}; the first client's own connection to the "
              f"host: {greedy_direct[0] if greedy_direct else 'closed at accept'} (its share is taken by its "
              f"proxied requests)")
    finally:
        stop_cluster(etcd, nodes)


CLUSTER = {"proxy-host": proxied_host, "proxy-conns": proxied_connections}


ATTACKS = {"rate": rate_caveat, "auth": failed_authentications, "store": store_memory,
           "component": crafted_component, "slowloris": slowloris, "outbound": outbound,
           "logs": logs_escapes, "dev": dev_cross_site, "buffers": write_buffers}

ATTACKS.update(ISOLATION)
ATTACKS.update(CLUSTER)


# A token's own `rate` caveat against a flood of distinct ones (item 20): attenuation needs no
# key, and each new rate once took one of 64 shared caveat limiters, dropping the one with the
# fewest callers (maybe the token's own 1/h, maybe another family's).
def caveat_flood():
    server = Server(policy='public = false\n[rate]\nquota = 100000\nwindow = "60s"\n')

    def call(token):
        request = urllib.request.Request(server.url + "/fn/hello/fine", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.headers, b""
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()

    def remaining(headers):
        return next((p.split("=")[1] for p in headers.get("RateLimit", "").split(";") if p.startswith("r=")), "?")

    try:
        server.deploy("hello", "misbehave")
        hourly = server.mint("fn = hello", "rate = 1/h")
        spent = [call(hourly)[0] for _ in range(2)]
        other = server.mint("fn = hello", "rate = 5/h")
        before = [remaining(call(other)[1]) for _ in range(2)]
        flood = []
        for i in range(150):
            command = [binary(), "token", "attenuate", hourly]
            for n in range(7):
                command += ["--caveat", f"rate = {10 + 7 * i + n}/h"]
            flood.append(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip())
        replies = [call(token) for _ in range(2) for token in flood]
        codes = [status for status, _, _ in replies]
        details = {}
        for status, _, body in replies:
            if status != 200:
                detail = json.loads(body).get("detail", "")
                details[detail[:70]] = details.get(detail[:70], 0) + 1
        common = sorted(details.items(), key=lambda item: -item[1])[:2]
        after = call(other)
        print(f"20. a rate = 1/h token ({spent[0]}, then {spent[1]}) attenuated 150 times with 7 more rates each "
              f"(10/h to 1059/h), each token sent twice: {codes.count(200)} allowed, {codes.count(429)} refused "
              f"({'; '.join(f'{n} x {d!r}' for d, n in common)}); the token itself afterwards: {call(hourly)[0]}; "
              f"another family's rate = 5/h: r = {before[1]} before the flood, {remaining(after[1])} on its next "
              f"request ({after[0]}), 2 when nothing was reset")
    finally:
        server.stop()


ATTACKS["caveats"] = caveat_flood


# etcd's own limits (items 8 and 9 of the cluster-state issue): a guest granted global data
# fills etcd, and the listing of function records outgrows one reply. Need etcd, as above.

def etcd_range(etcd, key):
    """The values of `key` in etcd (at most one), through its JSON gateway."""
    import base64
    body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
    request = urllib.request.Request(etcd.endpoint + "/v3/kv/range", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return [base64.b64decode(kv["value"]) for kv in json.loads(response.read()).get("kvs", [])]


def served_here(node, name, deadline=30):
    """Waits until `node` runs `name` itself (every node hosts a function without a replica count)."""
    until = time.time() + deadline
    while time.time() < until:
        answer = get_from(node.url, f"/fn/{name}/fine")
        if answer and answer[0] == 200 and answer[1].get("ledge-node"):
            return
        time.sleep(0.2)
    sys.exit(f"{name} is not served on {node.url}")


def global_quota():
    started = cluster("--global-kv-max-bytes", "1MiB")
    if not started:
        return print("cluster 8. skipped: etcd is not installed (Debian's etcd-server)")
    etcd, (a, b) = started
    try:
        a.deploy("filler", "misbehave", '[limits]\ntimeout = "10s"\n[kv]\nscope = "global"\nmax_bytes = "256KiB"\n')
        b.deploy("hog", "misbehave", '[limits]\ntimeout = "10s"\n[kv]\nscope = "global"\n')
        for node in (a, b):
            for name in ("filler", "hog"):
                served_here(node, name)
        through_a = a.request("GET", "/fn/filler/kv-fill?kib=32")[1].decode().strip()
        through_b = b.request("GET", "/fn/filler/kv-fill?kib=32")[1].decode().strip()
        hog = b.request("GET", "/fn/hog/kv-fill?kib=64")[1].decode().strip()
        dropped = a.request("GET", "/fn/hog/kv-drop")[1].decode().strip()
        print(f"cluster 8. a function with scope global and max_bytes 256 KiB filling 32 KiB values through "
              f"node a: {through_a!r}; then through node b: {through_b!r}; one with the default 64 MiB quota "
              f"under --global-kv-max-bytes 1MiB: {hog!r}; its deletes at the ceiling: {dropped}")
    finally:
        stop_cluster(etcd, nodes=[a, b])


def large_listing():
    started = cluster()
    if not started:
        return print("cluster 9. skipped: etcd is not installed (Debian's etcd-server)")
    etcd, (a, b) = started
    late = None
    try:
        a.deploy("gone", "misbehave")
        a.request("PUT", "/v1/functions/gone/config/TOKEN?secret=true", b"secret-of-gone", a.token)
        names = [f"big-{i}" for i in range(6)]
        value = b"v" * (64 << 10)
        for name in names:
            a.deploy(name, "misbehave")
            for key in range(15):
                status, body = a.request("PUT", f"/v1/functions/{name}/config/K{key:02}", value, a.token)
                assert status == 204, body
        b.stop()
        removed = a.request("DELETE", "/v1/functions/gone", token=a.token)[0]
        tombstone = etcd_range(etcd, "/ledge/fn/gone")
        deadline = time.time() + 30
        while etcd_range(etcd, "/ledge/fn/gone") and time.time() < deadline:
            time.sleep(0.2)
        left = etcd_range(etcd, "/ledge/fn/gone")
        started_at = time.time()
        late = Server("--cluster", etcd.endpoint, "--node-name", "c")
        ready = None
        while time.time() - started_at < 60:
            if late.request("GET", "/readyz")[0] == 200:
                ready = time.time() - started_at
                break
            time.sleep(0.2)
        listed = json.loads(late.request("GET", "/v1/functions", token=late.token)[1] or b"{}")
        print(f"cluster 9. 6 functions with 15 config values of 64 KiB each (~5.6 MiB of records, past the "
              f"client's 4 MiB reply): a node started afterwards is ready in "
              f"{'never (60 s)' if ready is None else f'{ready:.1f} s'} and lists "
              f"{len(listed.get('functions', listed) if isinstance(listed, dict) else listed)} functions; a removal "
              f"({removed}) while node b was down left a tombstone of {len(tombstone[0]) if tombstone else 0} bytes "
              f"({'with' if tombstone and b'config' in tombstone[0] else 'without'} the function's config), "
              f"{'still in etcd after 30 s' if left else 'deleted once every live node had applied it'}")
    finally:
        for node in (late, a, b):
            if node:
                node.stop()
        etcd.stop()


ATTACKS.update({"global-quota": global_quota, "large-listing": large_listing})

if __name__ == "__main__":
    for name in sys.argv[1:] or ATTACKS:
        ATTACKS[name]()
