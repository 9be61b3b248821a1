"""Writes pickles.json: pickles made by Python's own pickle module at protocols 0 to 5, with what
patchbay must make of them (the value as JSON, by the rules in host/src/channel/peer/pickle.rs) or
the start of the refusal message.

Run from this folder with the system python3 (standard library only):

    python3 make_pickles.py > pickles.json

Nothing here is unpickled; building the hostile pickles runs nothing either (pickling only
records names).
"""

import datetime
import json
import math
import os
import pickle
import sys


class Point:
    def __init__(self):
        self.x = 1


class RunsACommand:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def expected(v):
    """The JSON patchbay makes of a decoded value."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return v if -(2**63) <= v < 2**64 else float(v)
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(v, (bytes, bytearray)):
        return list(v)
    if isinstance(v, (list, tuple)):
        return [expected(x) for x in v]
    if isinstance(v, (set, frozenset)):
        return [expected(x) for x in sorted(v)]
    if isinstance(v, dict):
        return {key_text(k): expected(x) for k, x in v.items()}
    raise TypeError(type(v))


def key_text(k):
    if isinstance(k, str):
        return k
    if k is None or isinstance(k, (bool, int, float)):
        return json.dumps(k)
    # Keys json.dumps refuses: their JSON text, compact.
    return json.dumps(expected(k), separators=(",", ":"))


def nested(depth):
    v = []
    for _ in range(depth - 1):
        v = [v]
    return v


def recursive():
    v = []
    v.append(v)
    return v


shared = [1, 2]
shared_pair = [shared, shared]
small_x = [b"xy"]
small_y = [small_x] * 10
big_x = [b"x" * 100]
big_y = [big_x] * 100
big_z = [big_y] * 100

PLAIN = {
    "none": None,
    "true": True,
    "false": False,
    "ints": [0, 1, -1, 255, 256, 65535, 65536, 2**31 - 1, -(2**31), 2**31, 2**63 - 1, -(2**63)],
    "big_ints": [2**64 - 1, 2**64, -(2**70), 10**40],
    "floats": [0.0, -2.5, 1e300, 5e-324, float("inf"), float("nan")],
    "strings": ["", "show", "é ✓ 🎛", "line\nbreak \\ back", "x" * 300],
    "bytes": [b"", b"\x00\xffabc", bytes(range(256)) + b"!" * 44],
    "bytearray": bytearray(b"xy"),
    "nested": [1, [2, [3, []]], (4, 5), {"k": [None]}],
    "tuples": [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)],
    "dict": {"a": 1, 2: "two", None: 0, 1.5: "f", (1, 2): "tuple", b"k": "bytes", False: "f"},
    "sets": [{3, 1, 2}, frozenset({5}), {frozenset({1})}, set()],
    "shared": [shared, shared, shared],
    # Shared two levels deep (serde-pickle 1.2 refuses this as "recursive").
    "shared_nested": [shared_pair, shared_pair],
    "long_list": list(range(1100)),
    "long_dict": {i: None for i in range(1001)},
    "deep_50": nested(50),
    "memo_small": [small_y] * 10,
    "top_tuple": (1, "a"),
}

HOSTILE = {
    "os_system": (RunsACommand(), "pickle needs the global `posix.system`"),
    "instance": (Point(), "pickle needs the global `"),
    "complex": (complex(1, 2), lambda p: "pickle needs the global `%s.complex`" % ("builtins" if p >= 3 else "__builtin__")),
    "datetime": (datetime.datetime(2024, 6, 1), "pickle needs the global `datetime.datetime`"),
    "recursive": (recursive(), "pickle holds a recursive structure"),
    "deep_150": (nested(150), "pickle nests deeper than 100 levels"),
    "memo_bomb": ([big_z] * 100, "pickle would decode to more than 1000000 items"),
    "huge_int": (10**5000, "pickle holds an integer longer than 4300 digits"),
}


def main():
    sys.set_int_max_str_digits(0) if hasattr(sys, "set_int_max_str_digits") else None
    out = []
    for protocol in range(6):
        for name, value in PLAIN.items():
            if name.startswith("long_") and protocol not in (1, 4):
                # Batching (APPENDS/SETITEMS in runs of 1000) is the point; two protocols show it.
                continue
            data = pickle.dumps(value, protocol=protocol)
            out.append({"name": name, "protocol": protocol, "hex": data.hex(), "value": expected(value)})
        for name, (value, error) in HOSTILE.items():
            data = pickle.dumps(value, protocol=protocol)
            if callable(error):
                error = error(protocol)
            out.append({"name": name, "protocol": protocol, "hex": data.hex(), "error": error})
    # One vector a line, so a diff shows which changed.
    sys.stdout.write('{"python": %s, "vectors": [\n' % json.dumps(sys.version.split()[0]))
    sys.stdout.write(",\n".join(json.dumps(v, separators=(",", ":")) for v in out))
    sys.stdout.write("\n]}\n")


if __name__ == "__main__":
    main()
