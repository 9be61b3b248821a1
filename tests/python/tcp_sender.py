"""A python-osc TCP sender for patchbay's end-to-end tests (issue 7).

    python tcp_sender.py HOST:PORT MODE SPEC_JSON REPLIES

Connects one pythonosc.tcp_client.SimpleTCPClient in MODE ("1.0": each
packet after a big-endian int32 size; "1.1": SLIP, END before and after each
packet), sends the items of SPEC_JSON in order (the format of sender.py:
{"simple": ...}, {"message": ...}, {"bundle": [...]}), then reads REPLIES
messages from the same connection with python-osc's own receive() and prints
one JSON line per message:

    {"address": "/x", "args": [...]}

(arguments as receiver.py prints them). Exits 0 when all replies came, 2
when the connection went quiet or closed first. Standard library and
python-osc only.
"""

import json
import sys

from pythonosc import osc_packet, tcp_client

# Beside this file: the spec builder and the argument printer the UDP helpers use.
from receiver import to_json
from sender import build, value


def main():
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    host, port = sys.argv[1].rsplit(":", 1)
    mode = sys.argv[2]
    spec = json.loads(sys.argv[3])
    replies = int(sys.argv[4])

    client = tcp_client.SimpleTCPClient(host, int(port), mode=mode, timeout=20.0)
    for item in spec:
        if "simple" in item:
            client.send_message(item["simple"], [value(v) for v in item.get("values", [])])
        else:
            client.send(build(item))

    got = 0
    while got < replies:
        # One receive() waits up to 15 s; an empty answer means the connection went quiet or closed.
        dgrams = client.receive(timeout=15.0)
        if not dgrams:
            break
        for dgram in dgrams:
            if not dgram:
                continue
            for timed in osc_packet.OscPacket(dgram).messages:
                m = timed.message
                line = {"address": m.address, "args": [to_json(a) for a in m.params]}
                print(json.dumps(line), flush=True)
                got += 1
    client.close()
    if got < replies:
        print("tcp_sender.py: %d of %d replies arrived" % (got, replies), file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
