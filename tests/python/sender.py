"""A python-osc sender for patchbay's end-to-end tests.

    python sender.py HOST:PORT SPEC_JSON

SPEC_JSON is a list of items, sent in order from one UDP socket:

    {"simple": "/addr", "values": [1, 2.5, "go", true, null, {"blob": "00ff"}, [1, 2]]}
        SimpleUDPClient.send_message with python-osc's own type inference
        ({"blob": hex} becomes bytes, {"midi": [a, b, c, d]} a 4-tuple).
    {"message": "/addr", "args": [["i", 1], ["d", 0.25], ["r", 287454020], [["i", "s"], [1, "x"]]]}
        OscMessageBuilder.add_arg(value, type) for each [type, value] (a list type is an array).
    {"bundle": [ITEM, ...]}
        OscBundleBuilder(IMMEDIATELY) holding the "message" and "bundle" items inside.
"""

import json
import sys

from pythonosc import osc_bundle_builder, osc_message_builder, udp_client


def value(v):
    if isinstance(v, dict) and "blob" in v:
        return bytes.fromhex(v["blob"])
    if isinstance(v, dict) and "midi" in v:
        return tuple(v["midi"])
    if isinstance(v, list):
        return [value(x) for x in v]
    return v


def build(item):
    if "message" in item:
        builder = osc_message_builder.OscMessageBuilder(address=item["message"])
        for arg_type, arg_value in item.get("args", []):
            builder.add_arg(value(arg_value), arg_type)
        return builder.build()
    if "bundle" in item:
        builder = osc_bundle_builder.OscBundleBuilder(osc_bundle_builder.IMMEDIATELY)
        for element in item["bundle"]:
            builder.add_content(build(element))
        return builder.build()
    raise SystemExit("sender.py: cannot build %r" % (item,))


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    host, port = sys.argv[1].rsplit(":", 1)
    spec = json.loads(sys.argv[2])
    client = udp_client.SimpleUDPClient(host, int(port))
    for item in spec:
        if "simple" in item:
            client.send_message(item["simple"], [value(v) for v in item.get("values", [])])
        else:
            client.send(build(item))


if __name__ == "__main__":
    main()
