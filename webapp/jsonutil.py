"""JSON encoding shared by the database layer and the record store."""
import hashlib
import json


class RawJSON(str):
    """A value that is already JSON text. The store serialises each record once (it needs the
    canonical text for the content hash anyway) and hands it to the database as-is."""


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(text):
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def serialize(value):
    """SQLAlchemy's json_serializer for every engine: pass RawJSON through untouched."""
    if isinstance(value, RawJSON):
        return str(value)
    return json.dumps(value, default=str)
