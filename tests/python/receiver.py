"""A python-osc receiver for patchbay's end-to-end tests.

Binds a BlockingOSCUDPServer on 127.0.0.1 (port 0 by default), prints
{"listening": "127.0.0.1:PORT"} as its first line, then one JSON line per OSC
message it dispatches:

    {"from": "127.0.0.1:PORT", "address": "/x", "args": [...], "bundle": false}

Arguments are JSON values where they map directly (int, float, str, bool,
null, arrays as lists); blobs become {"blob": "<hex>"}, MIDI {"midi": [port,
status, d1, d2]}, time tags {"timetag": [seconds_since_1900, fraction]} and
RGBA stays the uint32 python-osc decodes. "bundle" says whether the datagram
that carried the message was a bundle.

Exits 0 after --count messages, or 2 after --timeout seconds without them.
Standard library and python-osc only.
"""

import argparse
import json
import sys
import time
from datetime import datetime

from pythonosc import dispatcher, osc_bundle, osc_server

NTP_EPOCH = datetime(1900, 1, 1)


def to_json(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"blob": bytes(value).hex()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, tuple):
        # python-osc decodes 'm' as a 4-tuple and 't' as (datetime, fraction).
        if len(value) == 2 and isinstance(value[0], datetime):
            seconds = int((value[0] - NTP_EPOCH).total_seconds())
            return {"timetag": [seconds, value[1]]}
        return {"midi": list(value)}
    return value


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()

    received = []
    current = {"bundle": False}

    def handler(client_address, address, *osc_args):
        line = {
            "from": "%s:%d" % (client_address[0], client_address[1]),
            "address": address,
            "args": [to_json(a) for a in osc_args],
            "bundle": current["bundle"],
        }
        print(json.dumps(line), flush=True)
        received.append(line)

    disp = dispatcher.Dispatcher(strict_timing=False)
    disp.set_default_handler(handler, needs_reply_address=True)

    class Server(osc_server.BlockingOSCUDPServer):
        def finish_request(self, request, client_address):
            current["bundle"] = osc_bundle.OscBundle.dgram_is_bundle(request[0])
            super().finish_request(request, client_address)

    server = Server((args.host, args.port), disp)
    server.timeout = 0.1
    host, port = server.server_address[:2]
    print(json.dumps({"listening": "%s:%d" % (host, port)}), flush=True)

    deadline = time.monotonic() + args.timeout
    while len(received) < args.count:
        if time.monotonic() >= deadline:
            print(
                "receiver.py: timed out after %.1fs with %d of %d messages"
                % (args.timeout, len(received), args.count),
                file=sys.stderr,
                flush=True,
            )
            server.server_close()
            sys.exit(2)
        server.handle_request()
    server.server_close()


if __name__ == "__main__":
    main()
