"""A real peerpy 1.2.2 peer that listens on 127.0.0.1, accepts (or denies) offers and prints what
it receives.

    python peer_listen.py [--port P] [--accept true|false] [--reply VALUE_JSON]... [--echo]
        [--expect N] [--timeout S] [--peer-timeout S] [--max-connections N]

VALUE_JSON is a value as peer_values.py describes. The Peer is invisible (no discovery). One JSON
line per event on stdout, the first always the listening address:

    {"event": "listen", "address": "127.0.0.1:PORT"}
    {"event": "offer", "peer_name": "...", "data_type": "json", "strict": true, "stream": false,
     "accepted": true}                                  strict/stream as peerpy read them (note:
                                                        peerpy reads strict=False as true)
    {"event": "connection", "peer": "..."}
    {"event": "sent", "ok": true}                       one per --reply, sent on each new connection
    {"event": "send_error", "error": "..."}
    {"event": "data", "peer": "...", "value": VALUE_JSON}
    {"event": "echoed", "ok": true}                     --echo: each value sent back as it came
    {"event": "close", "peer": "..."}
    {"event": "done", "received": N}  or  {"event": "timeout", "received": N}

Exits 0 once N values arrived (--expect), 2 on the --timeout deadline (default 10 s). With
--expect 0 it runs until the deadline and exits 0 (a peer to connect to, deny, or watch). Every
exit is os._exit: peerpy's threads do not end by themselves after a remote close.
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
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--accept", type=parse_bool, default=True)
    parser.add_argument("--reply", action="append", default=[], type=json.loads)
    parser.add_argument("--echo", action="store_true")
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--peer-timeout", type=float, default=2.0)
    parser.add_argument("--max-connections", type=int, default=0)
    args = parser.parse_args()

    received = []
    arrived = threading.Condition()

    def on_data(connection, data):
        emit("data", peer=connection.target_name, value=to_json(data))
        if args.echo:
            try:
                emit("echoed", ok=connection.send(data))
            except Exception as e:
                emit("send_error", error="%s: %s" % (type(e).__name__, e))
        with arrived:
            received.append(data)
            arrived.notify_all()

    def on_close(connection):
        emit("close", peer=connection.target_name)

    def on_offer(peer, connection):
        # Handlers set here are in place before the connection's thread starts.
        connection.handlers["data"] = on_data
        connection.handlers["close"] = on_close
        emit(
            "offer",
            peer_name=connection.target_name,
            data_type=connection.data_type,
            strict=connection.strict,
            stream=connection.stream,
            accepted=args.accept,
        )
        return args.accept

    def on_connection(peer, connection):
        emit("connection", peer=connection.target_name)
        for value in args.reply:
            try:
                emit("sent", ok=connection.send(from_json(value)))
            except Exception as e:
                emit("send_error", error="%s: %s" % (type(e).__name__, e))

    deadline = time.monotonic() + args.timeout
    peer = Peer(
        "127.0.0.1",
        args.port,
        invisible=True,
        timeout=args.peer_timeout,
        max_connections=args.max_connections,
        handlers={
            "listen": lambda peer: emit("listen", address=peer.address_name),
            "offer": on_offer,
            "connection": on_connection,
            "stop": lambda peer: None,
        },
    )
    peer.start()

    with arrived:
        while args.expect == 0 or len(received) < args.expect:
            left = deadline - time.monotonic()
            if left <= 0:
                if args.expect == 0:
                    emit("done", received=len(received))
                    os._exit(0)
                emit("timeout", received=len(received))
                os._exit(2)
            arrived.wait(left)
    time.sleep(0.1)
    emit("done", received=len(received))
    os._exit(0)


if __name__ == "__main__":
    main()
