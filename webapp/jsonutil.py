"""JSON encoding shared by the database layer and the record store."""
import hashlib
import json

import orjson


class RawJSON(str):
    """A value that is already JSON text. The store serialises each record once (it needs the
    canonical text for the content hash anyway) and hands it to the database as-is."""


_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def canonical(value):
    """Sorted-key compact JSON: the same content always gives the same text (and hash),
    whatever order the provider sent the keys in."""
    return _canonical_bytes(value).decode()


def canonical_with_hash(value):
    """(canonical(value), its content_hash), hashing the encoded bytes as they come (once per
    record on a sync's hot path: no decode and encode again in between)."""
    encoded = _canonical_bytes(value)
    return encoded.decode(), _hash(encoded)


def _canonical_bytes(value):
    """orjson, because this runs per record; the standard library for what orjson refuses
    (integers beyond 64 bits), never lossy."""
    try:
        return orjson.dumps(value, option=_CANONICAL, default=str)
    except TypeError:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def content_hash(text):
    return _hash(text.encode("utf-8"))


def _hash(encoded):
    return hashlib.blake2b(encoded, digest_size=16).hexdigest()


def serialize(value):
    """SQLAlchemy's json_serializer for every engine: pass RawJSON through untouched."""
    if isinstance(value, RawJSON):
        return str(value)
    return json.dumps(value, default=str)
