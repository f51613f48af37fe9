#!/usr/bin/env python3
"""An ipckit client in Python, written from docs/PROTOCOL.md alone.

    python3 client.py uds:///tmp/x.sock hello        # prints the reply
    python3 client.py tcp://127.0.0.1:7000 hello
    python3 client.py uds:///tmp/x.sock --pushes     # subscribes, asks "ping", then
                                                     # prints the reply and two pushes

Against a contract server (docs/PROTOCOL.md, *Contracts*):

    python3 client.py uds:///tmp/x.sock --call calculator add '{"a":2,"b":3}'   # prints 5
    python3 client.py uds:///tmp/x.sock --notify calculator remember '{"value":7}'
"""
import collections
import json
import socket
import struct
import sys

MAGIC = b"IPCK"
MESSAGE, REQUEST, REPLY, ERROR = 1, 2, 3, 4
REFUSED = 2  # welcome status: this client is not admitted
BUSY = 3  # welcome status: the server takes no more connections now
LINE = 4  # welcome status: the endpoint speaks ?framing=line, not this handshake


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return data


class CallFailed(Exception):
    """A contract call that failed: `kind` says how ("app" for the method's own error,
    whose value is `data`), `message` says why."""

    def __init__(self, error, data):
        super().__init__(f"{error['kind']}: {error['message']}")
        self.kind = error["kind"]
        self.message = error["message"]
        self.served = error.get("served", [])
        self.data = data


def call_body(obj, method, args):
    body = {"method": method, "args": args}
    if obj:
        body["object"] = obj
    return json.dumps(body).encode()


class Client:
    def __init__(self, url, max_message=16 << 20):
        if url.startswith("uds://@"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect("\0" + url[len("uds://@"):])
        elif url.startswith("uds://"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(url[len("uds://"):])
        elif url.startswith("tcp://"):
            host, port = url[len("tcp://"):].rsplit(":", 1)
            self.sock = socket.create_connection((host.strip("[]"), int(port)))
        else:
            raise ValueError("only uds:// and tcp:// are stream endpoints")
        self.max_message = max_message
        # The protocol lets a client send frames before the welcome; this one simply
        # reads the welcome first, which is also allowed.
        try:
            self.sock.sendall(struct.pack("<4sBBHI", MAGIC, 1, 1, 0, max_message))
        except (BrokenPipeError, ConnectionResetError):
            pass  # a server that refuses us closes without reading the hello; read why
        magic, version, status, _, server_max = struct.unpack("<4sBBHI", recv_exact(self.sock, 12))
        if magic == MAGIC and status == REFUSED:
            reason = recv_exact(self.sock, min(server_max, 1024))
            raise PermissionError("the server refused this connection: " + reason.decode("utf-8", "replace"))
        if magic == MAGIC and status == BUSY:
            reason = recv_exact(self.sock, min(server_max, 1024))
            raise ConnectionRefusedError("the server refused the connection: " + reason.decode("utf-8", "replace"))
        if magic == MAGIC and status == LINE:
            reason = recv_exact(self.sock, min(server_max, 1024))
            raise ConnectionError("the server does not speak the ipckit handshake: " + reason.decode("utf-8", "replace"))
        if magic != MAGIC or status != 0:
            raise ConnectionError(f"refused: version {version}, status {status}")
        self.server_max = server_max
        self.next_id = 1
        # Messages the server pushed that came while a request waited for its reply.
        self.pushed = collections.deque()

    def _send(self, kind, ident, payload):
        if len(payload) > self.server_max:
            raise ValueError(f"{len(payload)} bytes exceed the server's {self.server_max}")
        self.sock.sendall(struct.pack("<IB3xQ", len(payload), kind, ident) + payload)

    def send(self, payload):
        self._send(MESSAGE, 0, payload)

    def _read_frame(self):
        length, kind, ident = struct.unpack("<IB3xQ", recv_exact(self.sock, 16))
        if length > self.max_message:
            raise ConnectionError("the server broke the protocol: frame too large")
        body = recv_exact(self.sock, length)
        if kind == ERROR and ident == 0:
            raise ConnectionError("the server ended the connection: " + body.decode("utf-8", "replace"))
        return kind, ident, body

    def request(self, payload):
        ident, self.next_id = self.next_id, self.next_id + 1
        self._send(REQUEST, ident, payload)
        while True:
            kind, reply_id, body = self._read_frame()
            if kind == MESSAGE:
                self.pushed.append(body)  # a server push, kept for recv()
                continue
            if reply_id != ident or kind not in (REPLY, ERROR):
                continue  # another request's answer, or a REQUEST (reserved): not ours
            if kind == ERROR:
                raise RuntimeError(body.decode("utf-8", "replace"))
            return body

    def call(self, obj, method, args):
        """Calls contract method `method` of object `obj` (None: the server's only object)
        with `args`, a dict of the arguments by name, and returns its result."""
        reply = json.loads(self.request(call_body(obj, method, args)))
        if "error" in reply:
            raise CallFailed(reply["error"], reply.get("data"))
        return reply.get("ok")

    def notify(self, obj, method, args):
        """Sends one-way contract method `method`: nothing answers, not even an error."""
        self.send(call_body(obj, method, args))

    def recv(self):
        """The next message the server pushed (a MESSAGE frame), waiting for it."""
        if self.pushed:
            return self.pushed.popleft()
        while True:
            kind, _, body = self._read_frame()
            if kind == MESSAGE:
                return body
            # An answer to no request of ours (this client waits for each), or a
            # REQUEST (reserved): ignored.


if __name__ == "__main__":
    url, text = sys.argv[1], sys.argv[2]
    client = Client(url)
    if text in ("--call", "--notify"):
        obj, method = sys.argv[3], sys.argv[4]
        args = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
        if text == "--notify":
            client.notify(obj, method, args)
        else:
            try:
                sys.stdout.write(json.dumps(client.call(obj, method, args)) + "\n")
            except CallFailed as failed:
                detail = "" if failed.data is None else " " + json.dumps(failed.data)
                sys.exit(f"client.py: {method} failed: {failed}{detail}")
    elif text == "--pushes":
        client.send(b"subscribe")
        sys.stdout.write(client.request(b"ping").decode() + "\n")
        sys.stdout.write(client.recv().decode() + "\n")
        sys.stdout.write(client.recv().decode() + "\n")
    else:
        client.send(b"hello from python")
        sys.stdout.write(client.request(text.encode()).decode() + "\n")
