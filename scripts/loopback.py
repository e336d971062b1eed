"""What the load scripts (soak.py, torture.py) share: a free loopback port and one request on a
fresh connection."""
import http.client
import socket

HOST = "127.0.0.1"


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def call(port, method, path, body=None, headers=None, timeout=10.0, source=None):
    """One request on a fresh connection, optionally from another loopback address `source`:
    (status, body bytes). Raises OSError/HTTPException."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout,
                                      source_address=(source, 0) if source and source != HOST else None)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()
