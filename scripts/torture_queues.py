#!/usr/bin/env python3
"""Queue crash torture for ledge (standard library only; scripts/torture-queues.sh builds and runs it).

  torture_queues.py --ledge BIN --wasm FILE [--kills N] [--senders 2] ...

Starts `ledge serve` on a fresh data dir (a temp dir, removed at exit) and deploys the
`queue-worker` test component as both a sender and the consumer of queue `jobs`. Then KILLS
times: SENDERS threads send messages for a random 0.1-1.0 s, each inside a transaction that
also writes a key and then commits (answer 200 + the message id) or rolls back (409), while the
consumer acknowledges deliveries; the server is SIGKILLed with both in flight and restarted on
the same data dir. At the end the queue is drained and the run checks:

  (a) every message whose transaction was acknowledged (200) was delivered at least once;
  (b) no message whose transaction rolled back (409) was ever delivered;
  (c) nothing was delivered that no sender sent.

Sends cut off by a kill (no answer) may or may not have committed: either is fine. The number of
duplicate deliveries (a message delivered, recorded by the consumer, then the server killed before
the acknowledgement was durable) is printed: at-least-once allows them. Exit 0 when there was no
violation, 1 otherwise, 2 when the run could not be carried out.
"""
import argparse
import http.client
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time

from loopback import HOST, call, free_port
from torture import RunError, Server, deploy

REQUEST_TIMEOUT_S = 5.0

POLICY = """public = true
[rate]
quota = 1000000000
window = "1s"
[queues]
send = ["jobs"]
[[consumer]]
queue = "jobs"
path = "/jobs/torture"
backoff = "100ms"
max_attempts = 1000
concurrency = 4
"""


class Sender(threading.Thread):
    """Sends messages `NAME-N`, committing or rolling back at random, until told to stop."""

    def __init__(self, port, name, stop, seed):
        super().__init__(daemon=True)
        self.port, self.name, self.stop = port, name, stop
        self.rng = random.Random(seed)
        self.committed, self.rolled_back, self.unknown = set(), set(), set()
        self.statuses = {}
        self.sent = 0

    def run(self):
        conn = None
        while not self.stop.is_set():
            self.sent += 1
            body = f"{self.name}-{self.sent}"
            commit = self.rng.random() < 0.7
            path = f"/fn/queue-worker/send?queue=jobs&commit={1 if commit else 0}"
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(HOST, self.port, timeout=REQUEST_TIMEOUT_S)
                conn.request("POST", path, body=body.encode())
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                self.unknown.add(body)
                if conn is not None:
                    conn.close()
                conn = None
                self.stop.wait(0.01)
                continue
            # Paced, so that the consumer keeps up and the queue stays within its bounds.
            self.stop.wait(0.01)
            if response.status == 200:
                self.committed.add(body)
            elif response.status == 409:
                self.rolled_back.add(body)
            else:
                self.unknown.add(body)
                self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
        if conn is not None:
            conn.close()


def deliveries(port):
    """Every delivery the consumer recorded: {body: times acknowledged}."""
    delivered, start = {}, 0
    while True:
        status, body = call(port, "GET", f"/fn/queue-worker/seen?from={start}", timeout=30)
        if status != 200:
            raise RunError(f"GET /seen answered {status}: {body[:200]!r}")
        page = json.loads(body)
        for record in page:
            if record["status"] == 200:
                delivered[record["body"]] = delivered.get(record["body"], 0) + 1
        if len(page) < 2000:
            return delivered
        start += len(page)


def depth(port, token):
    status, body = call(port, "GET", "/v1/queues", headers={"authorization": f"Bearer {token}"})
    if status != 200:
        raise RunError(f"GET /v1/queues answered {status}: {body[:200]!r}")
    queues = {q["name"]: q for q in json.loads(body)["queues"]}
    jobs = queues.get("jobs", {"depth": 0, "in_flight": 0})
    return jobs["depth"] + jobs["in_flight"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ledge", required=True, help="the ledge binary")
    parser.add_argument("--wasm", required=True, help="queue_worker.wasm")
    parser.add_argument("--kills", type=int, default=300)
    parser.add_argument("--senders", type=int, default=2)
    parser.add_argument("--min-load", type=float, default=0.1)
    parser.add_argument("--max-load", type=float, default=1.0)
    parser.add_argument("--restart-timeout", type=float, default=30.0)
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--progress", type=int, default=50)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    work = tempfile.mkdtemp(prefix="ledge-torture-queues-")
    policies = os.path.join(work, "policies")
    os.makedirs(policies)
    with open(os.path.join(policies, "queue-worker.toml"), "w") as f:
        f.write(POLICY)
    server = Server(os.path.abspath(args.ledge), os.path.join(work, "data"), policies, free_port(), work)

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    committed, rolled_back, unknown, statuses = set(), set(), set(), {}
    began = time.monotonic()
    rounds = 0
    print(f"torture-queues: {args.kills} kills, {args.senders} senders, seed {seed}, port {server.port}, "
          f"work dir {work}", flush=True)
    try:
        server.start()
        server.wait_ok("/healthz", time.monotonic() + args.restart_timeout, "first start")
        token = open(os.path.join(server.data_dir, "admin.token")).read().strip()
        deploy(server.port, token, "queue-worker", args.wasm)
        for round_no in range(1, args.kills + 1):
            stop = threading.Event()
            senders = [Sender(server.port, f"r{round_no}s{i}", stop, rng.randrange(1 << 32))
                       for i in range(args.senders)]
            for sender in senders:
                sender.start()
            time.sleep(rng.uniform(args.min_load, args.max_load))
            server.kill9()
            stop.set()
            for sender in senders:
                sender.join(timeout=REQUEST_TIMEOUT_S + 5)
                committed |= sender.committed
                rolled_back |= sender.rolled_back
                unknown |= sender.unknown
                for status, n in sender.statuses.items():
                    statuses[status] = statuses.get(status, 0) + n
            started = server.start()
            server.wait_ok("/fn/queue-worker/count", started + args.restart_timeout, f"restart {round_no}")
            rounds = round_no
            if round_no % args.progress == 0 or round_no == args.kills:
                print(f"  kill {round_no}/{args.kills}: committed {len(committed)}, rolled back "
                      f"{len(rolled_back)}, unknown {len(unknown)}, elapsed {time.monotonic() - began:.0f} s",
                      flush=True)
        deadline = time.monotonic() + args.drain_timeout
        while depth(server.port, token) > 0:
            if time.monotonic() > deadline:
                raise RunError(f"the queue did not drain within {args.drain_timeout} s")
            time.sleep(0.2)
        delivered = deliveries(server.port)
        server.stop()
    except RunError as error:
        print(f"torture-queues: ERROR: {error}", file=sys.stderr, flush=True)
        server.proc and server.proc.poll() is None and server.proc.kill()
        args.keep or shutil.rmtree(work, ignore_errors=True)
        return 2
    except KeyboardInterrupt as interrupted:
        print(f"torture-queues: interrupted ({interrupted})", file=sys.stderr)
        server.proc and server.proc.poll() is None and server.proc.kill()
        args.keep or shutil.rmtree(work, ignore_errors=True)
        return 2

    violations = []
    lost = sorted(committed - delivered.keys())
    if lost:
        violations.append(f"{len(lost)} acknowledged messages never delivered, e.g. {lost[:5]}")
    ghosts = sorted(rolled_back & delivered.keys())
    if ghosts:
        violations.append(f"{len(ghosts)} rolled-back messages delivered, e.g. {ghosts[:5]}")
    invented = sorted(delivered.keys() - committed - rolled_back - unknown)
    if invented:
        violations.append(f"{len(invented)} delivered messages nobody sent, e.g. {invented[:5]}")
    duplicates = sum(n - 1 for n in delivered.values() if n > 1)
    unknown_delivered = len(unknown & delivered.keys())
    elapsed = time.monotonic() - began
    print("torture-queues summary")
    print(f"  kills (SIGKILL under load)       {rounds}")
    print(f"  sends committed (200)            {len(committed)}")
    print(f"  sends rolled back (409)          {len(rolled_back)}")
    print(f"  sends cut off by a kill          {len(unknown)} ({unknown_delivered} of them had committed)")
    print(f"  other statuses                   {statuses or 'none'}")
    print(f"  messages delivered               {len(delivered)}")
    print(f"  duplicate deliveries             {duplicates}")
    print(f"  elapsed                          {elapsed:.0f} s")
    print(f"  violations                       {len(violations)}")
    for violation in violations:
        print(f"    - {violation}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
