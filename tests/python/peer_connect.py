"""A real peerpy 1.2.2 peer that connects to ADDRESS, sends values and prints what it receives.

    python peer_connect.py 127.0.0.1:PORT [--data-type json|bytes|raw] [--strict true|false]
        [--stream] [--send VALUE_JSON]... [--send-delay S] [--expect N] [--timeout S]
        [--peer-timeout S] [--close]

VALUE_JSON is a value as peer_values.py describes (for a bytes connection: {"$bytes": "HEX"}).
The Peer is bound to 127.0.0.1 on a free port and invisible (no discovery). One JSON line per
event on stdout:

    {"event": "peer", "address": "127.0.0.1:PORT"}            our own address (the HELLO's peer_name)
    {"event": "connection", "peer": "...", "data_type": "json", "strict": true, "stream": false}
    {"event": "denied"}                                         connect() gave up (DENY, no answer)
    {"event": "sent", "ok": true}                               one per --send (ok: peerpy's answer)
    {"event": "send_error", "error": "..."}                     peerpy raised (DataSizeError, ...)
    {"event": "data", "value": VALUE_JSON}                      one per value received
    {"event": "close"}                                          peerpy's close event
    {"event": "done", "received": N}  or  {"event": "timeout", "received": N}

Exits 0 once N values arrived (--expect, default 0) after all sends, 2 on the --timeout deadline
(default 10 s), 3 when the offer was not accepted. peerpy never fires `close` after the other side
closes (its thread spins), so the process always ends on its own: every exit is os._exit.
peerpy must be importable (peerpy==1.2.2 and requests, which it imports without declaring it).
"""

import argparse
import json
import os
import threading
import time

from peerpy import Peer

from peer_values import emit, from_json, parse_bool, to_json


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("--data-type", default="json", choices=["json", "bytes", "raw"])
    parser.add_argument("--strict", type=parse_bool, default=True)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--send", action="append", default=[], type=json.loads)
    parser.add_argument("--send-delay", type=float, default=0.0)
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--peer-timeout", type=float, default=2.0)
    parser.add_argument("--close", action="store_true", help="close the connection after sending")
    args = parser.parse_args()

    received = []
    arrived = threading.Condition()

    def on_data(connection, data):
        emit("data", value=to_json(data))
        with arrived:
            received.append(data)
            arrived.notify_all()

    def on_close(connection):
        emit("close")

    deadline = time.monotonic() + args.timeout
    peer = Peer(
        "127.0.0.1",
        0,
        invisible=True,
        timeout=args.peer_timeout,
        handlers={"listen": lambda peer: None, "stop": lambda peer: None},
    )
    emit("peer", address=peer.address_name)

    connection = peer.connect(
        args.address,
        data_type=args.data_type,
        strict=args.strict,
        stream=args.stream,
        handlers={"data": on_data, "close": on_close},
    )
    if not connection:
        emit("denied")
        os._exit(3)
    emit(
        "connection",
        peer=connection.target_name,
        data_type=connection.data_type,
        strict=connection.strict,
        stream=connection.stream,
    )

    for i, value in enumerate(args.send):
        if i and args.send_delay:
            time.sleep(args.send_delay)
        try:
            emit("sent", ok=connection.send(from_json(value)))
        except Exception as e:  # peerpy raises DataSizeError, DataTypeError, socket errors
            emit("send_error", error="%s: %s" % (type(e).__name__, e))

    if args.close:
        connection.close(force=True)

    with arrived:
        while len(received) < args.expect:
            left = deadline - time.monotonic()
            if left <= 0:
                emit("timeout", received=len(received))
                os._exit(2)
            arrived.wait(left)
    # Let the last bytes we sent leave before the process (and its sockets) ends.
    time.sleep(0.1)
    emit("done", received=len(received))
    os._exit(0)


if __name__ == "__main__":
    main()
