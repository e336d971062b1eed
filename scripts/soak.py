#!/usr/bin/env python3
"""Soak test for ledge (standard library only; scripts/soak.sh builds and runs it).

  soak.py --ledge BIN --functions DIR --guests DIR [--minutes 10] [--json FILE]

Starts `ledge serve` on a fresh data dir (a temp dir, removed at exit) and deploys hello,
counter, bank, shortener, `private` (hello behind a token) and the misbehaving test guest
(`misbehave`: /trap panics, /spin loops until the 1 s timeout, /hog grows past a 16 MiB memory
limit). Then:

1. Capacity: closed-loop hello with wrk (-t1 -c32, as scripts/bench.sh, then -t2 -c32), ~10 s
   each, with the CPU time of wrk and of ledge so that a saturated generator shows; then the
   mixed traffic (below) closed-loop for ~10 s.
2. Soak: for MINUTES, wrk sends the mixed traffic paced at --fraction (0.8) of the lower of the
   two capacities (each connection on a fixed schedule: open loop as far as the server keeps
   up), while Python threads send the low-rate traffic: a caller over its token's `rate`
   caveat (200 or 429), tokens a caveat refuses (403), missing, malformed and forged tokens
   (401; from their own loopback addresses, 429 once the failed-authentication budget of an
   address is spent), trap (500), spin (504), hog (500), and a redeploy of hello every 30 s.
   The server's RSS, descriptors, threads, key-value bytes and versions, CPU and the load
   average are sampled every 10 s.

Fails (exit 1) on a 5xx where it is not the route's expected outcome, on connection errors or
timeouts, when the server dies, when RSS grows more than --max-rss-growth (10%) between the end
of the warm-up (--warmup-fraction, 20% of the run) and the end, or when the descriptors at the
end exceed those at the warm-up by more than --fd-slack (16). Prints tables (requests by route
and status; p50/p99 per route per window; samples) and writes the same as JSON (--json).
Exit 2 when the run could not be carried out.
"""
import argparse
import http.client
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from loopback import HOST, call, free_port


# Routes sent by wrk (soak.lua) and their weights in the mix; expected statuses per route.
MIX = {"hello": 66, "private": 5, "counter": 8, "transfer": 8, "bank-total": 1, "short-get": 11.7,
       "short-post": 0.3}
EXPECTED = {
    "hello": {200}, "private": {200}, "counter": {200}, "transfer": {200, 409}, "bank-total": {200},
    "short-get": {302}, "short-post": {201},
    "rate-limited": {200, 429},   # a token with `rate = 5/s` sending 10/s
    "forbidden": {403},           # a valid token whose `fn` caveat names another function
    "expired": {403},             # a valid token whose `time <` caveat has passed
    "no-token": {401},            # a private function without a token (not charged)
    "malformed": {401, 429},      # garbage token, from 127.0.0.2 (429: failed-auth budget spent)
    "forged": {401, 429},         # a real token with its signature changed, from 127.0.0.3
    "trap": {500},                # the guest panics: ledge answers 500 ("the function trapped")
    "spin": {504},                # an infinite loop: 504 at the policy's 1 s timeout
    "hog": {500},                 # grows past its 16 MiB memory limit: 500 naming the limit
    "redeploy": {200},            # PUT /v1/functions/hello (a new version)
}
# Low-rate routes: (route, period in seconds, source address).
SIDE = [("rate-limited", 0.1, HOST), ("forbidden", 0.5, HOST), ("expired", 1.0, HOST),
        ("no-token", 0.5, HOST), ("malformed", 1.0, "127.0.0.2"), ("forged", 1.0, "127.0.0.3"),
        ("trap", 0.5, HOST), ("spin", 10.0, HOST), ("hog", 1.0, HOST), ("redeploy", 30.0, HOST)]


class RunError(Exception):
    pass


def bucket(latency_us):
    return math.floor(math.log(max(latency_us, 1)) * 20)


def quantile(hist, q):
    """The q-quantile (ms) of a {bucket: count} histogram."""
    total = sum(hist.values())
    if not total:
        return None
    rank, seen = q * total, 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= rank:
            return math.exp((b + 0.5) / 20) / 1000
    return None


class Stats:
    """Requests by (window, route, status) and latency histograms by (window, route)."""

    def __init__(self):
        self.counts, self.hists = {}, {}
        self.lock = threading.Lock()

    def add(self, window, route, status, latency_us=None, n=1):
        with self.lock:
            key = (window, route)
            per = self.counts.setdefault(key, {})
            per[status] = per.get(status, 0) + n
            if latency_us is not None:
                hist = self.hists.setdefault(key, {})
                b = bucket(latency_us)
                hist[b] = hist.get(b, 0) + n

    def add_bucket(self, window, route, b, n):
        with self.lock:
            hist = self.hists.setdefault((window, route), {})
            hist[b] = hist.get(b, 0) + n

    def by_route(self):
        out = {}
        for (_, route), per in self.counts.items():
            agg = out.setdefault(route, {})
            for status, n in per.items():
                agg[status] = agg.get(status, 0) + n
        return out


def read_wrk_out(path, stats):
    """Merges soak.lua's output into stats; returns (errors dict, requests, duration_s, late)."""
    errors, requests, duration, late = {}, 0, 0.0, 0
    with open(path) as f:
        for line in f:
            parts = line.split()
            if parts[0] == "S":
                stats.add(int(parts[1]), parts[2], int(parts[3]), n=int(parts[4]))
            elif parts[0] == "H":
                stats.add_bucket(int(parts[1]), parts[2], int(parts[3]), int(parts[4]))
            elif parts[0] == "E":
                errors = dict(zip(["connect", "read", "write", "status", "timeout"], map(int, parts[1:])))
            elif parts[0] == "T":
                requests, duration = int(parts[1]), int(parts[2]) / 1e6
            elif parts[0] == "L":
                late += int(parts[1])
    return errors, requests, duration, late


class Proc:
    """/proc readings of one process."""

    def __init__(self, pid):
        self.pid = pid

    def status(self):
        fields = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        return fields

    def rss_kib(self):
        return int(self.status()["VmRSS"].split()[0])

    def fds(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cpu_s(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric_values(port, names):
    try:
        status, body = call(port, "GET", "/metrics", timeout=5)
    except (OSError, http.client.HTTPException):
        return {}
    out = {}
    for line in body.decode(errors="replace").splitlines():
        for name in names:
            if line.startswith(name + " ") or line.startswith(name + "{"):
                try:
                    out[name] = out.get(name, 0) + float(line.rsplit(" ", 1)[1])
                except ValueError:
                    pass
    return out


def run_wrk(args_list, env=None, timeout=None):
    """Runs wrk; returns (stdout, cpu seconds of wrk)."""
    proc = subprocess.Popen(args_list, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    killer = threading.Timer(timeout, proc.kill) if timeout else None
    if killer:
        killer.start()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if killer:
        killer.cancel()
    if proc.returncode != 0:
        raise RunError(f"wrk failed ({proc.returncode}): {out[-2000:]}")
    return out, usage.ru_utime + usage.ru_stime


def rps_of(wrk_out):
    match = re.search(r"Requests/sec:\s+([\d.]+)", wrk_out)
    return float(match.group(1)) if match else 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ledge", required=True)
    parser.add_argument("--functions", required=True, help="folder with hello/counter/bank/shortener .wasm")
    parser.add_argument("--guests", required=True, help="folder with misbehave.wasm")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--capacity-seconds", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=0.8, help="share of the capacity to run at")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (one per thread) for the mix")
    parser.add_argument("--window", type=int, default=60, help="seconds per statistics window")
    parser.add_argument("--sample", type=float, default=10, help="seconds between RSS/fd samples")
    parser.add_argument("--warmup-fraction", type=float, default=0.2)
    parser.add_argument("--max-rss-growth", type=float, default=0.10)
    parser.add_argument("--fd-slack", type=int, default=16)
    parser.add_argument("--json", help="write the summary as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (data, server log)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("soak: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    duration = int(args.minutes * 60)
    work = tempfile.mkdtemp(prefix="ledge-soak-")

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        return soak(args, duration, work)
    except RunError as error:
        print(f"soak: ERROR: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupted:
        print(f"soak: interrupted ({interrupted})", file=sys.stderr)
        return 2
    finally:
        for proc in RUNNING:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if args.keep:
            print(f"soak: data and server log kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


RUNNING = []


def soak(args, duration, work):
    policies = os.path.join(work, "policies")
    os.makedirs(policies)
    # Quotas the load never reaches (this measures serving, not refusing); rate refusals come
    # from the rate-limited caller's token caveat. Everything is public but `private`.
    files = {
        "default.toml": 'public = false\n[rate]\nquota = 1000000000\nwindow = "1s"\n',
        "hello.toml": "public = true\n", "counter.toml": "public = true\n", "bank.toml": "public = true\n",
        "shortener.toml": "public = true\n",
        "misbehave.toml": 'public = true\n[limits]\ntimeout = "1s"\nmemory = "16MiB"\n',
    }
    for name, text in files.items():
        with open(os.path.join(policies, name), "w") as f:
            f.write(text)
    port, metrics_port = free_port(), free_port()
    data = os.path.join(work, "data")
    log_path = os.path.join(work, "server.log")
    env = dict(os.environ)
    # One log line per request at this rate would be gigabytes; warnings and the rest stay.
    env.setdefault("LEDGE_LOG", "info,wasmtime_wasi_http=warn,ledge::access=warn")
    with open(log_path, "wb") as log:
        server = subprocess.Popen([args.ledge, "serve", "--listen", f"{HOST}:{port}", "--data-dir", data,
                                   "--policies", policies, "--metrics-listen", f"{HOST}:{metrics_port}"],
                                  stdout=log, stderr=subprocess.STDOUT, env=env)
    RUNNING.append(server)
    proc = Proc(server.pid)

    def log_tail(n=40):
        with open(log_path, "rb") as f:
            return "\n".join(f.read().decode(errors="replace").splitlines()[-n:])

    def alive():
        if server.poll() is not None:
            raise RunError(f"the server exited with {server.returncode}\n--- server log (tail) ---\n{log_tail()}")

    deadline = time.monotonic() + 30
    while True:
        alive()
        try:
            if call(port, "GET", "/healthz", timeout=1)[0] == 200:
                break
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() > deadline:
            raise RunError("the server did not answer /healthz within 30 s")
        time.sleep(0.05)
    admin = open(os.path.join(data, "admin.token")).read().strip()
    auth = {"authorization": f"Bearer {admin}"}
    wasm = {name: os.path.join(args.functions, f"{name}.wasm") for name in ("hello", "counter", "bank", "shortener")}
    wasm["private"] = wasm["hello"]
    wasm["misbehave"] = os.path.join(args.guests, "misbehave.wasm")
    for name, path in wasm.items():
        with open(path, "rb") as f:
            status, body = call(port, "PUT", f"/v1/functions/{name}", body=f.read(), headers=auth, timeout=120)
        if status not in (200, 201):
            raise RunError(f"deploying {name}: {status} {body[:300]!r}")
    hello_bytes = open(wasm["hello"], "rb").read()

    def attenuate(*caveats):
        cmd = [args.ledge, "token", "attenuate", admin]
        for caveat in caveats:
            cmd += ["--caveat", caveat]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout.strip()

    tokens = {
        "private": attenuate("op = invoke", "fn = private"),
        "rate-limited": attenuate("op = invoke", "fn = hello", "rate = 5/s"),
        "forbidden": attenuate("op = invoke", "fn = bank"),
        "expired": attenuate("op = invoke", "time < 2020-01-01T00:00:00Z"),
    }
    good = tokens["private"]
    tokens["forged"] = good[:-6] + ("AAAAAA" if not good.endswith("AAAAAA") else "BBBBBB")
    tokens["malformed"] = "not-a-token"
    accounts = 20
    for i in range(accounts):
        status, body = call(port, "PUT", f"/fn/bank/accounts/a{i}?balance=1000000")
        if status != 201:
            raise RunError(f"opening account a{i}: {status} {body[:200]!r}")
    codes = []
    for i in range(50):
        status, body = call(port, "POST", "/fn/shortener/", body=f"https://example.com/{i}".encode())
        if status != 201:
            raise RunError(f"creating a short link: {status} {body[:200]!r}")
        codes.append(body.decode().strip())

    samples = []
    phase = {"name": "setup"}
    sampler_stop = threading.Event()
    sample_lock = threading.Lock()

    def take_sample(label=None):
        with open("/proc/loadavg") as f:
            load1 = float(f.read().split()[0])
        fields = proc.status()
        metrics = metric_values(metrics_port, ["ledge_kv_live_bytes", "ledge_kv_live_versions", "ledge_kv_keys",
                                               "ledge_live_instances"])
        name = label or phase["name"]
        if name == "soak" and not wrk_running.is_set():
            name = "after-load"  # wrk has finished: its connections are gone
        sample = {"t": round(time.time() - soak_epoch[0], 1) if soak_epoch[0] else None,
                  "phase": name, "rss_kib": int(fields["VmRSS"].split()[0]),
                  "fds": proc.fds(), "threads": int(fields["Threads"]), "cpu_s": round(proc.cpu_s(), 2),
                  "kv_live_bytes": metrics.get("ledge_kv_live_bytes"),
                  "kv_live_versions": metrics.get("ledge_kv_live_versions"),
                  "kv_keys": metrics.get("ledge_kv_keys"), "live_instances": metrics.get("ledge_live_instances"),
                  "load1": load1}
        with sample_lock:
            samples.append(sample)
        return sample

    soak_epoch = [0.0]
    wrk_running = threading.Event()

    def sampler():
        while not sampler_stop.wait(args.sample):
            if server.poll() is not None:
                return
            try:
                take_sample()
            except (OSError, KeyError):
                return

    take_sample("idle-before")
    threading.Thread(target=sampler, daemon=True).start()
    ncpu = os.cpu_count()

    # 1. Capacity.
    capacity = {}
    hello_url = f"http://{HOST}:{port}/fn/hello/world"
    for threads in (1, 2):
        phase["name"] = f"capacity-hello-t{threads}"
        cpu0 = proc.cpu_s()
        t0 = time.monotonic()
        out, wrk_cpu = run_wrk(["wrk", f"-t{threads}", "-c32", f"-d{args.capacity_seconds}s", "--latency", hello_url],
                               timeout=args.capacity_seconds + 60)
        wall = time.monotonic() - t0
        alive()
        capacity[f"hello_t{threads}"] = {
            "rps": rps_of(out), "wrk_cpu_pct": round(100 * wrk_cpu / wall), "ledge_cpu_pct": round(100 * (proc.cpu_s() - cpu0) / wall),
            "non_2xx": int(re.search(r"Non-2xx or 3xx responses: (\d+)", out).group(1)) if "Non-2xx" in out else 0,
            "socket_errors": (re.search(r"Socket errors:.*", out).group(0) if "Socket errors" in out else "")}
    hello_cap = max(capacity["hello_t1"]["rps"], capacity["hello_t2"]["rps"])

    mix_spec = ",".join(f"{k}={v}" for k, v in MIX.items())
    conns = args.connections

    def wrk_env(interval_us, out_path, epoch):
        e = dict(os.environ)
        e.update({"SOAK_INTERVAL_US": str(interval_us), "SOAK_EPOCH": str(epoch), "SOAK_WINDOW_S": str(args.window),
                  "SOAK_ACCOUNTS": str(accounts), "SOAK_CODES": ",".join(codes), "SOAK_TOKEN": good,
                  "SOAK_MIX": mix_spec, "SOAK_OUT": out_path})
        return e

    lua = os.path.join(os.path.dirname(os.path.abspath(__file__)), "soak.lua")
    phase["name"] = "capacity-mixed"
    cap_stats = Stats()
    cap_out = os.path.join(work, "wrk-capacity.txt")
    cpu0, t0 = proc.cpu_s(), time.monotonic()
    out, wrk_cpu = run_wrk(["wrk", f"-t{conns}", f"-c{conns}", f"-d{args.capacity_seconds}s", "--timeout", "5s",
                            "-s", lua, f"http://{HOST}:{port}"], env=wrk_env(0, cap_out, time.time()),
                           timeout=args.capacity_seconds + 60)
    wall = time.monotonic() - t0
    alive()
    cap_errors, cap_requests, cap_duration, _ = read_wrk_out(cap_out, cap_stats)
    mixed_cap = cap_requests / cap_duration if cap_duration else 0.0
    capacity["mixed"] = {"rps": round(mixed_cap, 1), "wrk_cpu_pct": round(100 * wrk_cpu / wall),
                         "ledge_cpu_pct": round(100 * (proc.cpu_s() - cpu0) / wall), "errors": cap_errors,
                         "statuses": {r: {str(s): n for s, n in v.items()} for r, v in cap_stats.by_route().items()}}
    target = args.fraction * min(hello_cap, mixed_cap)
    interval_us = int(conns * 1e6 / target) if target > 0 else 0
    print(f"soak: {ncpu} cores; capacity (closed loop, {args.capacity_seconds} s each):", flush=True)
    for key, c in capacity.items():
        print(f"  {key:10} {c['rps']:>10.0f} req/s   wrk CPU {c['wrk_cpu_pct']}%   ledge CPU {c['ledge_cpu_pct']}%"
              f"   (100% = one core)", flush=True)
    print(f"soak: running the mix at {target:.0f} req/s ({args.fraction:.0%} of {min(hello_cap, mixed_cap):.0f}) "
          f"on {conns} connections plus the low-rate callers for {duration} s", flush=True)

    # 2. Soak.
    stats = Stats()
    stop = threading.Event()
    soak_epoch[0] = time.time()
    phase["name"] = "soak"
    wrk_running.set()

    def side(route, period, source):
        rng = random.Random(hash(route))
        next_at = time.monotonic() + rng.random() * period
        while True:
            wait = next_at - time.monotonic()
            if wait > 0 and stop.wait(wait):
                return
            if stop.is_set():
                return
            next_at += period
            if next_at < time.monotonic() - 5:
                next_at = time.monotonic()
            method, path, body, headers = "GET", "/fn/private/p", None, {}
            if route == "rate-limited":
                path, headers = "/fn/hello/limited", {"authorization": f"Bearer {tokens[route]}"}
            elif route in ("forbidden", "expired", "forged", "malformed"):
                headers = {"authorization": f"Bearer {tokens[route]}"}
            elif route in ("trap", "spin", "hog"):
                path = f"/fn/misbehave/{route}"
            elif route == "redeploy":
                method, path, body, headers = "PUT", "/v1/functions/hello", hello_bytes, auth
            started = time.time()
            try:
                status, _ = call(port, method, path, body=body, headers=headers, timeout=30, source=source)
            except (OSError, http.client.HTTPException) as error:
                status = f"error:{type(error).__name__}"
            finished = time.time()
            window = int((started - soak_epoch[0]) // args.window)
            stats.add(window, route, status, (finished - started) * 1e6)

    side_threads = [threading.Thread(target=side, args=spec, daemon=True) for spec in SIDE]
    for t in side_threads:
        t.start()
    soak_out = os.path.join(work, "wrk-soak.txt")
    cpu0, t0 = proc.cpu_s(), time.monotonic()
    wrk_result = {}

    def soak_wrk():
        try:
            wrk_result["out"], wrk_result["cpu"] = run_wrk(
                ["wrk", f"-t{conns}", f"-c{conns}", f"-d{duration}s", "--timeout", "5s", "-s", lua,
                 f"http://{HOST}:{port}"], env=wrk_env(interval_us, soak_out, soak_epoch[0]), timeout=duration + 120)
        except RunError as error:
            wrk_result["error"] = str(error)
        finally:
            wrk_running.clear()

    wrk_thread = threading.Thread(target=soak_wrk, daemon=True)
    wrk_thread.start()
    next_report = time.monotonic() + 60
    while wrk_thread.is_alive():
        wrk_thread.join(timeout=1)
        if server.poll() is not None:
            break
        if time.monotonic() >= next_report:
            next_report += 60
            with sample_lock:
                last = samples[-1]
            print(f"  {time.time() - soak_epoch[0]:5.0f} s: RSS {last['rss_kib'] / 1024:.1f} MiB, fds {last['fds']}, "
                  f"threads {last['threads']}, load {last['load1']}", flush=True)
    phase["name"] = "after-load"
    wall = time.monotonic() - t0
    soak_cpu = proc.cpu_s() - cpu0 if server.poll() is None else None
    stop.set()
    for t in side_threads:
        t.join(timeout=40)
    sampler_stop.set()
    alive()
    if "error" in wrk_result:
        raise RunError(wrk_result["error"])
    errors, requests, wrk_duration, late = read_wrk_out(soak_out, stats)
    with sample_lock:
        load_samples = [s for s in samples if s["phase"] == "soak"]
    time.sleep(3)
    idle_after = take_sample("idle-after")

    # Graceful stop.
    stop_started = time.monotonic()
    server.send_signal(signal.SIGTERM)
    try:
        exit_code = server.wait(timeout=40)
    except subprocess.TimeoutExpired:
        server.kill()
        exit_code = "did not stop within 40 s of SIGTERM"
    stop_s = time.monotonic() - stop_started
    warnings = [line for line in log_tail(10**6).splitlines() if " WARN " in line or " ERROR " in line]

    # 3. Checks and report.
    failures = []
    by_route = stats.by_route()
    unexpected = {}
    for route, per in by_route.items():
        for status, n in per.items():
            if status not in EXPECTED.get(route, set()):
                unexpected.setdefault(route, {})[status] = n
    unexpected_5xx = {r: {s: n for s, n in per.items() if isinstance(s, int) and s >= 500}
                      for r, per in unexpected.items()}
    unexpected_5xx = {r: v for r, v in unexpected_5xx.items() if v}
    if unexpected_5xx:
        failures.append(f"unexpected 5xx: {unexpected_5xx}")
    transport = {r: {s: n for s, n in per.items() if isinstance(s, str)} for r, per in unexpected.items()}
    transport = {r: v for r, v in transport.items() if v}
    if transport:
        failures.append(f"connection errors from the low-rate callers: {transport}")
    wrk_transport = {k: v for k, v in errors.items() if k != "status" and v}
    if wrk_transport:
        failures.append(f"wrk connection errors or timeouts: {wrk_transport}")
    if exit_code != 0:
        failures.append(f"the server's exit after SIGTERM: {exit_code}")
    warmup_s = args.warmup_fraction * duration
    after_warmup = [s for s in load_samples if s["t"] is not None and s["t"] >= warmup_s]
    checks = {}
    if after_warmup and load_samples:
        warm, end = after_warmup[0], load_samples[-1]
        growth = (end["rss_kib"] - warm["rss_kib"]) / warm["rss_kib"]
        checks = {"warmup_s": warmup_s, "rss_kib_warmup": warm["rss_kib"], "rss_kib_end": end["rss_kib"],
                  "rss_growth": round(growth, 4), "fds_warmup": warm["fds"], "fds_end": end["fds"],
                  "rss_kib_start": load_samples[0]["rss_kib"], "rss_kib_peak": max(s["rss_kib"] for s in load_samples),
                  "fds_start": load_samples[0]["fds"], "fds_peak": max(s["fds"] for s in load_samples),
                  "fds_idle_before": samples[0]["fds"], "fds_idle_after": idle_after["fds"],
                  "rss_kib_idle_after": idle_after["rss_kib"]}
        if growth > args.max_rss_growth:
            failures.append(f"RSS grew {growth:.1%} from the end of the warm-up ({warm['rss_kib']} KiB at "
                            f"{warm['t']} s) to the end ({end['rss_kib']} KiB)")
        if end["fds"] > warm["fds"] + args.fd_slack:
            failures.append(f"descriptors grew from {warm['fds']} (warm-up) to {end['fds']} (end)")
    else:
        failures.append("too few samples to judge RSS and descriptors (run longer)")

    routes = [r for r in list(MIX) + [s[0] for s in SIDE] if r in by_route]
    windows = sorted({w for (w, _) in stats.hists})
    latency = {}
    for route in routes:
        latency[route] = {}
        for w in windows:
            hist = stats.hists.get((w, route))
            if hist:
                latency[route][w] = (quantile(hist, 0.5), quantile(hist, 0.99))
    achieved = requests / wrk_duration if wrk_duration else 0
    side_total = sum(sum(by_route.get(r, {}).values()) for r, _, _ in SIDE)

    print()
    print(f"requests by route and status ({duration} s; wrk {requests} requests = {achieved:.0f}/s "
          f"for a target of {target:.0f}/s, {late} sent >1 s late; low-rate callers {side_total})")
    print(f"  {'route':14} {'requests':>10}  statuses (expected: {'{…}'})")
    for route in routes:
        per = by_route[route]
        shown = ", ".join(f"{s}: {n}" for s, n in sorted(per.items(), key=lambda kv: str(kv[0])))
        flag = "" if route not in unexpected else "   UNEXPECTED " + str(unexpected[route])
        print(f"  {route:14} {sum(per.values()):>10}  {shown}   {sorted(EXPECTED[route])}{flag}")
    print()
    print(f"latency p50/p99 in ms per route per {args.window} s window")
    print("  " + f"{'route':14}" + "".join(f"{f'w{w + 1}':>16}" for w in windows))
    for route in routes:
        cells = []
        for w in windows:
            q = latency[route].get(w)
            cells.append(f"{q[0]:.2f}/{q[1]:.2f}" if q else "-")
        print("  " + f"{route:14}" + "".join(f"{c:>16}" for c in cells))
    print()
    print("server samples (every %g s)" % args.sample)
    print(f"  {'t s':>6} {'phase':18} {'RSS MiB':>8} {'fds':>5} {'threads':>7} {'kv MiB':>7} {'kv vers':>8} "
          f"{'CPU s':>8} {'load1':>6}")
    for s in samples:
        kv = f"{s['kv_live_bytes'] / 2**20:.2f}" if s["kv_live_bytes"] is not None else "-"
        versions = f"{s['kv_live_versions']:.0f}" if s["kv_live_versions"] is not None else "-"
        t = f"{s['t']:.0f}" if s["t"] is not None else "-"
        print(f"  {t:>6} {s['phase']:18} {s['rss_kib'] / 1024:>8.1f} {s['fds']:>5} {s['threads']:>7} {kv:>7} "
              f"{versions:>8} {s['cpu_s']:>8.1f} {s['load1']:>6}")
    print()
    if checks:
        print(f"RSS: start {checks['rss_kib_start'] / 1024:.1f} MiB, after warm-up ({warmup_s:.0f} s) "
              f"{checks['rss_kib_warmup'] / 1024:.1f}, peak {checks['rss_kib_peak'] / 1024:.1f}, end "
              f"{checks['rss_kib_end'] / 1024:.1f} ({checks['rss_growth']:+.1%} since warm-up; limit "
              f"{args.max_rss_growth:.0%}); idle after {checks['rss_kib_idle_after'] / 1024:.1f}")
        print(f"fds: idle before {checks['fds_idle_before']}, start {checks['fds_start']}, after warm-up "
              f"{checks['fds_warmup']}, peak {checks['fds_peak']}, end {checks['fds_end']} (slack {args.fd_slack}), "
              f"idle after {checks['fds_idle_after']}")
    loads = [s["load1"] for s in load_samples]
    print(f"ledge CPU during the soak: {100 * soak_cpu / wall:.0f}% of one core" if soak_cpu else "", end="")
    print(f"; wrk CPU {100 * wrk_result['cpu'] / wall:.0f}%; load average (1 min) during the soak: "
          f"min {min(loads, default=0)}, max {max(loads, default=0)}, on {ncpu} cores")
    print(f"server stop after SIGTERM: exit {exit_code} in {stop_s:.1f} s; {len(warnings)} WARN/ERROR log lines")
    for line in warnings[:10]:
        print(f"  {line[:240]}")
    verdict = "FAIL" if failures else "PASS"
    print(f"soak: {verdict}")
    for failure in failures:
        print(f"  - {failure}")

    summary = {
        "verdict": verdict, "failures": failures, "duration_s": duration, "cores": ncpu,
        "capacity": capacity, "target_rps": round(target, 1), "achieved_rps": round(achieved, 1),
        "wrk": {"requests": requests, "errors": errors, "late": late, "connections": conns, "mix": MIX},
        "requests": {r: {str(s): n for s, n in per.items()} for r, per in by_route.items()},
        "expected": {r: sorted(v) for r, v in EXPECTED.items()},
        "unexpected": {r: {str(s): n for s, n in per.items()} for r, per in unexpected.items()},
        "latency_ms": {r: {str(w): {"p50": round(q[0], 3), "p99": round(q[1], 3)} for w, q in per.items()}
                       for r, per in latency.items()},
        "window_s": args.window, "samples": samples, "checks": checks,
        "server_exit": exit_code, "server_stop_s": round(stop_s, 2), "log_warnings": warnings[:50],
        "load1": {"min": min(loads, default=None), "max": max(loads, default=None)},
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
        print(f"summary: {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
