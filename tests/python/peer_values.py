"""Shared by peer_connect.py and peer_listen.py: values as JSON on the command line and on stdout,
and the JSON-lines event printer.

Values are plain JSON, plus tagged objects for what JSON cannot say (so raw pickles can carry
bytes, tuples, sets and non-string dict keys both ways):

    {"$bytes": "00ff"}           bytes
    {"$tuple": [1, 2]}           tuple
    {"$set": [1, 2]}             set (printed sorted where the elements sort)
    {"$frozenset": [1]}          frozenset
    {"$float": "nan"}            nan, "inf", "-inf"
    {"$dict": [[1, "a"]]}        dict with keys that are not all strings

Standard library only.
"""

import json
import math
import sys
import threading

_lock = threading.Lock()


def emit(event, **fields):
    """Prints one JSON line {"event": ..., ...} and flushes (threads share stdout)."""
    line = json.dumps(dict(event=event, **fields))
    with _lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def from_json(v):
    """A tagged JSON value as the Python value it stands for."""
    if isinstance(v, list):
        return [from_json(x) for x in v]
    if isinstance(v, dict):
        if len(v) == 1:
            (tag, inner), = v.items()
            if tag == "$bytes":
                return bytes.fromhex(inner)
            if tag == "$tuple":
                return tuple(from_json(x) for x in inner)
            if tag == "$set":
                return set(from_json(x) for x in inner)
            if tag == "$frozenset":
                return frozenset(from_json(x) for x in inner)
            if tag == "$float":
                return float(inner)
            if tag == "$dict":
                return {from_json(k): from_json(x) for k, x in inner}
        return {k: from_json(x) for k, x in v.items()}
    return v


def _sorted(items):
    try:
        return sorted(items)
    except TypeError:
        return list(items)


def to_json(v):
    """A Python value as tagged JSON (the inverse of from_json)."""
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return {"$float": repr(v)}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"$bytes": bytes(v).hex()}
    if isinstance(v, list):
        return [to_json(x) for x in v]
    if isinstance(v, tuple):
        return {"$tuple": [to_json(x) for x in v]}
    if isinstance(v, frozenset):
        return {"$frozenset": [to_json(x) for x in _sorted(v)]}
    if isinstance(v, set):
        return {"$set": [to_json(x) for x in _sorted(v)]}
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v):
            return {k: to_json(x) for k, x in v.items()}
        return {"$dict": [[to_json(k), to_json(x)] for k, x in v.items()]}
    return {"$repr": repr(v)}


def parse_bool(text):
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError("expected true or false, got %r" % text)
