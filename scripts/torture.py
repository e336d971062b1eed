#!/usr/bin/env python3
"""Crash-consistency torture for ledge (standard library only; scripts/torture.sh builds and runs it).

  torture.py --ledge BIN --wasm-dir DIR [--kills N] [--clients 8] [--accounts 10] ...

Starts `ledge serve` on a fresh data dir (a temp dir, removed at exit), deploys `counter` and
`bank`, opens ACCOUNTS accounts with known balances, then KILLS times: runs CLIENTS threads
(half incrementing the counter, half transferring random amounts between random accounts) for
a random 0.1-1.0 s, SIGKILLs the server while their requests are in flight, restarts it on the
same data dir and port, and checks:

  (a) every count a client was answered with (200 + a number) is unique over the whole run
      (a duplicate means an acknowledged increment was lost and its count handed out again)
      and <= the counter read after the restart;
  (b) the bank's total equals the initial total and the number of accounts is unchanged.

Requests in flight at the kill get connection errors: they were never acknowledged, so they are
fine. Every wait is bounded: a restart that does not answer /healthz (or a first request) within
--restart-timeout seconds stops the run with an error. Exit 0 when there was no violation, 1
otherwise (details printed), 2 when the run could not be carried out (build, start, timeout).
"""
import argparse
import functools
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from loopback import HOST, call as loopback_call, free_port

REQUEST_TIMEOUT_S = 5.0
call = functools.partial(loopback_call, timeout=REQUEST_TIMEOUT_S)


class RunError(Exception):
    """The run could not go on (not a violation of an invariant)."""


class Server:
    def __init__(self, binary, data_dir, policies, port, log_dir):
        self.binary, self.data_dir, self.policies, self.port, self.log_dir = binary, data_dir, policies, port, log_dir
        self.proc = None
        self.starts = 0
        self.log_path = None

    def start(self):
        self.starts += 1
        # One log per start; only the last few are kept (the run can restart a thousand times).
        self.log_path = os.path.join(self.log_dir, f"server-{self.starts}.log")
        old = os.path.join(self.log_dir, f"server-{self.starts - 3}.log")
        if os.path.exists(old):
            os.remove(old)
        log = open(self.log_path, "wb")
        env = dict(os.environ)
        # Request lines at a thousand restarts fill the disk and tell nothing; keep the rest.
        env.setdefault("LEDGE_LOG", "info,wasmtime_wasi_http=warn,ledge::access=warn")
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--listen", f"{HOST}:{self.port}", "--data-dir", self.data_dir,
             "--policies", self.policies],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        return started

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ok(self, path, deadline, what):
        """Polls GET path until it answers 200 or the deadline passes (RunError then)."""
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RunError(f"the server exited with status {self.proc.returncode} while waiting for {what}\n"
                               f"--- {self.log_path} (tail) ---\n{self.log_tail()}")
            try:
                status, body = call(self.port, "GET", path, timeout=1.0)
                if status == 200:
                    return time.monotonic(), body
                last = f"status {status}: {body[:200]!r}"
            except (OSError, http.client.HTTPException) as error:
                last = repr(error)
            time.sleep(0.005)
        raise RunError(f"{what}: no 200 from GET {path} in time (last: {last})\n"
                       f"--- {self.log_path} (tail) ---\n{self.log_tail()}")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            raise RunError("the server did not die within 10 s of SIGKILL")

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=35)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Client(threading.Thread):
    """Sends one kind of request in a loop on a kept-alive connection until told to stop."""

    def __init__(self, port, kind, accounts, stop, seed):
        super().__init__(daemon=True)
        self.port, self.kind, self.accounts, self.stop = port, kind, accounts, stop
        self.rng = random.Random(seed)
        self.acked = []            # counts answered to increments
        self.transfers_ok = 0      # 200 to a transfer
        self.transfers_refused = 0  # 409 insufficient funds
        self.statuses = {}         # other statuses: {status: count}
        self.malformed = []        # 200 answers that are not a count
        self.conn_errors = 0
        self.in_flight = False

    def run(self):
        conn = None
        while not self.stop.is_set():
            if self.kind == "counter":
                method, path = "POST", "/fn/counter/"
            else:
                src, dst = self.rng.sample(self.accounts, 2)
                method, path = "POST", f"/fn/bank/transfer?from={src}&to={dst}&amount={self.rng.randint(1, 300)}"
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(HOST, self.port, timeout=REQUEST_TIMEOUT_S)
                self.in_flight = True
                conn.request(method, path)
                response = conn.getresponse()
                body = response.read()
                self.in_flight = False
            except (OSError, http.client.HTTPException):
                self.in_flight = False
                self.conn_errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                # The server is down (killed): do not spin while it is.
                self.stop.wait(0.01)
                continue
            if self.kind == "counter" and response.status == 200:
                try:
                    self.acked.append(int(body.strip()))
                except ValueError:
                    self.malformed.append(body[:100])
            elif self.kind == "bank" and response.status == 200:
                self.transfers_ok += 1
            elif self.kind == "bank" and response.status == 409:
                self.transfers_refused += 1
            else:
                self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
        if conn is not None:
            conn.close()


def deploy(port, token, name, path):
    with open(path, "rb") as f:
        body = f.read()
    status, answer = call(port, "PUT", f"/v1/functions/{name}", body=body,
                          headers={"authorization": f"Bearer {token}"}, timeout=120)
    if status not in (200, 201):
        raise RunError(f"deploying {name} failed: {status} {answer[:300]!r}")


def bank_total(port):
    status, body = call(port, "GET", "/fn/bank/total")
    if status != 200:
        raise RunError(f"GET /fn/bank/total answered {status}: {body[:300]!r}")
    return json.loads(body)


def mean(values):
    return sum(values) / len(values) if values else 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ledge", required=True, help="the ledge binary")
    parser.add_argument("--wasm-dir", required=True, help="folder with counter.wasm and bank.wasm")
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--clients", type=int, default=8, help="client threads (half counter, half bank)")
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--balance", type=int, default=1000, help="opening balance of each account")
    parser.add_argument("--min-load", type=float, default=0.1, help="shortest load before a kill (s)")
    parser.add_argument("--max-load", type=float, default=1.0, help="longest load before a kill (s)")
    parser.add_argument("--restart-timeout", type=float, default=30.0,
                        help="seconds a restart may take to answer /healthz and a first request")
    parser.add_argument("--progress", type=int, default=50, help="print progress every N kills")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", help="also write the summary as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (data, logs) at exit")
    args = parser.parse_args()

    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    work = tempfile.mkdtemp(prefix="ledge-torture-")
    policies = os.path.join(work, "policies")
    os.makedirs(policies)
    # Public, and a quota the load never reaches: this checks durability, not refusals.
    with open(os.path.join(policies, "default.toml"), "w") as f:
        f.write('public = true\n[rate]\nquota = 1000000000\nwindow = "1s"\n')
    server = Server(os.path.abspath(args.ledge), os.path.join(work, "data"), policies, free_port(), work)

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    accounts = [f"a{i}" for i in range(args.accounts)]
    initial_total = args.balance * args.accounts
    seen = {}             # count -> round it was acknowledged in
    violations = []
    other_statuses = {}
    malformed = []
    acked_total = transfers_ok = transfers_refused = conn_errors = 0
    kills_in_flight = 0
    restart_ms, healthz_ms = [], []
    max_acked = 0
    counter_after = 0
    began = time.monotonic()
    rounds_done = 0
    print(f"torture: {args.kills} kills, {args.clients} clients, {args.accounts} accounts x {args.balance}, "
          f"load {args.min_load}-{args.max_load} s per round, seed {seed}, port {server.port}, work dir {work}",
          flush=True)
    try:
        server.start()
        server.wait_ok("/healthz", time.monotonic() + args.restart_timeout, "first start")
        token = open(os.path.join(server.data_dir, "admin.token")).read().strip()
        for name in ("counter", "bank"):
            deploy(server.port, token, name, os.path.join(args.wasm_dir, f"{name}.wasm"))
        for account in accounts:
            status, body = call(server.port, "PUT", f"/fn/bank/accounts/{account}?balance={args.balance}")
            if status != 201:
                raise RunError(f"opening account {account} answered {status}: {body[:200]!r}")
        total = bank_total(server.port)
        if total != {"total": initial_total, "accounts": args.accounts}:
            raise RunError(f"the bank starts wrong: {total}")

        for round_no in range(1, args.kills + 1):
            stop = threading.Event()
            clients = [Client(server.port, "counter" if i % 2 == 0 else "bank", accounts, stop,
                              rng.randrange(1 << 32)) for i in range(args.clients)]
            for client in clients:
                client.start()
            time.sleep(rng.uniform(args.min_load, args.max_load))
            in_flight = sum(client.in_flight for client in clients)
            server.kill9()
            stop.set()
            kills_in_flight += in_flight > 0
            for client in clients:
                client.join(timeout=REQUEST_TIMEOUT_S + 5)
                if client.is_alive():
                    raise RunError(f"round {round_no}: a client thread did not stop within "
                                   f"{REQUEST_TIMEOUT_S + 5} s")

            started = server.start()
            deadline = started + args.restart_timeout
            healthy, _ = server.wait_ok("/healthz", deadline, f"restart {round_no} (/healthz)")
            first, body = server.wait_ok("/fn/counter/peek", deadline, f"restart {round_no} (first request)")
            healthz_ms.append((healthy - started) * 1000)
            restart_ms.append((first - started) * 1000)
            counter_after = int(body.strip())
            duplicates = []

            for client in clients:
                conn_errors += client.conn_errors
                transfers_ok += client.transfers_ok
                transfers_refused += client.transfers_refused
                for status, n in client.statuses.items():
                    other_statuses[status] = other_statuses.get(status, 0) + n
                malformed.extend(client.malformed)
                for count in client.acked:
                    acked_total += 1
                    if count in seen:
                        duplicates.append((count, seen[count]))
                    else:
                        seen[count] = round_no
                    max_acked = max(max_acked, count)
            if duplicates:
                examples = ", ".join(f"{count} (first in round {first})" for count, first in sorted(duplicates)[:5])
                violations.append(f"round {round_no}: {len(duplicates)} counts acknowledged twice, e.g. {examples}: "
                                  f"acknowledged increments were lost and their counts handed out again")
            if max_acked > counter_after:
                violations.append(f"round {round_no}: counter after restart is {counter_after}, but "
                                  f"{max_acked} was acknowledged: acknowledged increments were lost")
            total = bank_total(server.port)
            if total != {"total": initial_total, "accounts": args.accounts}:
                violations.append(f"round {round_no}: bank after restart is {total}, expected "
                                  f"{{'total': {initial_total}, 'accounts': {args.accounts}}}")
            rounds_done = round_no
            if violations and len(violations) > 20:
                break
            if round_no % args.progress == 0 or round_no == args.kills:
                recent = restart_ms[-args.progress:]
                print(f"  kill {round_no}/{args.kills}: acked increments {acked_total}, transfers {transfers_ok}, "
                      f"counter {counter_after}, restart mean {mean(restart_ms):.1f} ms "
                      f"(last {len(recent)}: mean {mean(recent):.1f}, max {max(recent):.1f}), "
                      f"violations {len(violations)}, elapsed {time.monotonic() - began:.0f} s", flush=True)
        server.stop()
    except RunError as error:
        print(f"torture: ERROR: {error}", file=sys.stderr, flush=True)
        server.proc and server.proc.poll() is None and server.proc.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return 2
    except KeyboardInterrupt as interrupted:
        print(f"torture: interrupted ({interrupted})", file=sys.stderr)
        server.proc and server.proc.poll() is None and server.proc.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return 2

    elapsed = time.monotonic() - began
    if malformed:
        violations.append(f"{len(malformed)} 200 answers from the counter were not a count, e.g. {malformed[:3]}")
    summary = {
        "kills": rounds_done,
        "restarts": rounds_done,
        "kills_with_requests_in_flight": kills_in_flight,
        "acknowledged_increments": acked_total,
        "unique_counts": len(seen),
        "max_acknowledged_count": max_acked,
        "counter_at_end": counter_after,
        "transfers_acknowledged": transfers_ok,
        "transfers_refused_insufficient_funds": transfers_refused,
        "connection_errors": conn_errors,
        "other_statuses": {str(k): v for k, v in sorted(other_statuses.items())},
        "restart_ms": {"mean": round(mean(restart_ms), 1), "max": round(max(restart_ms, default=0), 1),
                       "min": round(min(restart_ms, default=0), 1),
                       "p50": round(sorted(restart_ms)[len(restart_ms) // 2], 1) if restart_ms else 0},
        "healthz_ms_mean": round(mean(healthz_ms), 1),
        "restart_ms_first_50_mean": round(mean(restart_ms[:50]), 1),
        "restart_ms_last_50_mean": round(mean(restart_ms[-50:]), 1),
        "restart_ms_all": [round(ms, 1) for ms in restart_ms],
        "bank_total": initial_total,
        "accounts": args.accounts,
        "violations": violations,
        "elapsed_s": round(elapsed, 1),
        "seed": seed,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    print("torture summary")
    print(f"  kills (SIGKILL under load)       {rounds_done} ({kills_in_flight} with a request in flight)")
    print(f"  restarts                         {rounds_done}")
    print(f"  acknowledged increments          {acked_total} ({'all unique' if acked_total == len(seen) else 'DUPLICATES'}; "
          f"max {max_acked} {'<=' if max_acked <= counter_after else '>'} counter after last restart {counter_after})")
    print(f"  transfers acknowledged           {transfers_ok} (+{transfers_refused} refused for funds)")
    print(f"  connection errors (unacked)      {conn_errors}")
    print(f"  other statuses                   {summary['other_statuses'] or 'none'}")
    print(f"  restart: start -> /healthz       mean {mean(healthz_ms):.1f} ms")
    print(f"  restart: start -> first request  mean {mean(restart_ms):.1f} ms, p50 {summary['restart_ms']['p50']} ms, "
          f"max {summary['restart_ms']['max']} ms")
    print(f"  restart: first 50 / last 50      mean {summary['restart_ms_first_50_mean']} ms / "
          f"{summary['restart_ms_last_50_mean']} ms")
    print(f"  bank                             total {initial_total}, {args.accounts} accounts, checked after every restart")
    print(f"  elapsed                          {elapsed:.0f} s ({rounds_done / elapsed * 60 if elapsed else 0:.0f} kills/min)")
    print(f"  violations                       {len(violations)}")
    for violation in violations[:50]:
        print(f"    - {violation}")
    if violations:
        print(f"--- last server log ({server.log_path}) ---\n{server.log_tail()}")
    if args.keep or violations:
        print(f"  data and logs kept in {work}" if args.keep else f"  (temp dir {work} removed)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
