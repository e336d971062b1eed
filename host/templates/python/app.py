"""{{name}}: a ledge function in Python. GET answers with a greeting; POST counts visits in one
serializable transaction (ledge:platform/transactions)."""
from wit_world import exports
from wit_world.imports import transactions
from wit_world.imports.types import (
    IncomingRequest, Method_Post, ResponseOutparam, OutgoingResponse, Fields, OutgoingBody,
)
from componentize_py_types import Err, Ok

GREETING = "Hello from {{name}}"


def count_visit() -> int:
    """One serializable read-modify-write, retried when it meets a concurrent one."""
    for _ in range(20):
        tx = transactions.begin(transactions.Isolation.SERIALIZABLE)
        try:
            stored = tx.get(b"visits")
            visits = int(stored.decode()) + 1 if stored else 1
            tx.put(b"visits", str(visits).encode())
            transactions.Transaction.commit(tx)
            return visits
        except Err as error:
            if not isinstance(error.value, transactions.Error_Conflict):
                raise
    raise RuntimeError("too many conflicts")


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        if isinstance(request.method(), Method_Post):
            text = f"visit {count_visit()}\n"
        else:
            text = f"{GREETING}! You asked for {request.path_with_query() or '/'}\n"
        response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain; charset=utf-8")]))
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        stream = body.write()
        stream.blocking_write_and_flush(text.encode())
        stream.__exit__(None, None, None)
        OutgoingBody.finish(body, None)
