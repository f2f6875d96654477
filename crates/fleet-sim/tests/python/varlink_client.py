"""An independent varlink client for the agent's socket, built on the `varlink` package
from PyPI (not on yeet's code). Prints one JSON object on stdout, so that the Rust test
that runs it (as some local user, on a test host) can check what happened.

Usage: varlink_client.py SOCKET introspect
       varlink_client.py SOCKET call METHOD [JSON-PARAMETERS]
       varlink_client.py SOCKET oversized          (a message that never ends)
       varlink_client.py SOCKET unread N SECONDS   (N calls, replies never read)
       varlink_client.py SOCKET unread-then-drain N SECONDS
                                  (N calls, replies unread for SECONDS, then read: did the
                                   agent close the connection meanwhile?)
       varlink_client.py SOCKET hog N SECONDS      (N idle connections)
"""

import json
import socket
import sys
import time

import varlink

INTERFACE = "org.yeet.Agent"


def out(value):
    print(json.dumps(value))
    sys.stdout.flush()


def raw(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def main():
    path, mode = sys.argv[1], sys.argv[2]
    address = "unix:" + path
    if mode == "introspect":
        with varlink.Client(address=address) as client:
            interfaces = client.get_interfaces()
            iface = client.get_interface(INTERFACE)
            conn = client.open_connection()
            service = client.handler(client._interfaces["org.varlink.service"], conn)
            description = service.GetInterfaceDescription(INTERFACE)["description"]
            info = dict(service.GetInfo())
            conn.close()
            out({
                "interfaces": interfaces,
                "methods": sorted(iface.members.keys()),
                "description": description,
                "info": info,
            })
    elif mode == "call":
        method = sys.argv[3]
        params = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
        try:
            with varlink.Client(address=address) as client:
                with client.open(INTERFACE) as agent:
                    reply = getattr(agent, method)(**params)
                    out({"ok": reply})
        except varlink.VarlinkError as e:
            out({"error": e.error(), "parameters": e.parameters()})
        except OSError as e:
            out({"connect_error": str(e)})
    elif mode == "oversized":
        s = raw(path)
        chunk = b"{" + b"x" * 65536
        sent = 0
        try:
            for _ in range(64):
                s.sendall(chunk)
                sent += len(chunk)
            # The agent gave up on the message: reading sees the connection end.
            s.settimeout(10)
            closed = s.recv(1) == b""
        except OSError:
            closed = True
        out({"sent": sent, "closed": closed})
    elif mode == "unread":
        n, seconds = int(sys.argv[3]), float(sys.argv[4])
        s = raw(path)
        call = json.dumps({"method": INTERFACE + ".GetStatus"}).encode() + b"\0"
        s.setblocking(False)
        sent = 0
        deadline = time.time() + seconds
        while sent < n and time.time() < deadline:
            try:
                s.send(call)
                sent += 1
            except BlockingIOError:
                time.sleep(0.05)
        out({"sent": sent})
        time.sleep(max(0, deadline - time.time()))
    elif mode == "unread-then-drain":
        n, seconds = int(sys.argv[3]), float(sys.argv[4])
        s = raw(path)
        call = json.dumps({"method": INTERFACE + ".GetStatus"}).encode() + b"\0"
        s.setblocking(False)
        sent = 0
        while sent < n:
            try:
                s.send(call)
                sent += 1
            except BlockingIOError:
                break
            except OSError:
                break
        time.sleep(seconds)
        # Whatever the agent wrote before it gave up is still buffered here; then the end.
        s.setblocking(True)
        s.settimeout(5)
        replies, closed = 0, False
        try:
            while True:
                chunk = s.recv(65536)
                if chunk == b"":
                    closed = True
                    break
                replies += chunk.count(b"\0")
        except ConnectionResetError:
            # Closed with calls of ours still unread on its side: a reset, not an end.
            closed = True
        except socket.timeout:
            pass
        out({"sent": sent, "replies": replies, "closed": closed})
    elif mode == "hog":
        n, seconds = int(sys.argv[3]), float(sys.argv[4])
        held = []
        for _ in range(n):
            try:
                held.append(raw(path))
            except OSError:
                break
        out({"held": len(held)})
        time.sleep(seconds)
    else:
        raise SystemExit("unknown mode " + mode)


main()
