"""Fetching the records of a batched record run (webapp/record_batches.py): in one request
per stream where the provider has a bulk endpoint (Connector.read_records), else each record
with read_page, several at once. Every request goes through the connector's HTTP client,
so the provider's shared rate limit (webapp/connectors/ratelimit.py, kept in Redis for
all workers) admits each one, however many threads ask.

What a record's fetch gives: a Page (empty when the record is gone), None for a record a
webhook said was deleted (nothing to fetch), or the exception it raised: the engine decides
whether that record fails alone or the run is retried (worker/engine.py)."""
import contextvars
from concurrent.futures import ThreadPoolExecutor

from webapp.connectors.base import Page, ReadRequest
from webapp.connectors.errors import ConfigError


class RecordFetcher:
    def __init__(self, app, connector, concurrency):
        self.app, self.connector = app, connector
        self.concurrency = max(1, int(concurrency))
        self._pool = None
        # The first record is fetched alone: it builds the connector's client, token and
        # caches (HighLevel's valid products) once, not once per thread.
        self._warm = False

    def fetch(self, chunk):
        """{position: Page | None | exception} for [(position, [stream, id, deleted, deliveries])]."""
        results, singles = {}, []
        by_stream = {}
        for position, entry in chunk:
            if entry[2]:
                results[position] = None
            else:
                by_stream.setdefault(entry[0], []).append((position, entry))
        for name, items in by_stream.items():
            try:
                stream = self.connector.stream(name)
                if stream.derived_from:
                    raise ConfigError(f"stream {name!r} is derived from {stream.derived_from!r}: "
                                      f"sync a {stream.derived_from} record instead")
                bulk = self._call(self.connector.read_records, stream, [entry[1] for _p, entry in items])
            except Exception as exc:  # the records of this stream share what happened
                bulk = exc
            if isinstance(bulk, Exception):
                results.update((position, bulk) for position, _entry in items)
            elif bulk is not None:
                for position, entry in items:
                    results[position] = bulk.get(entry[1]) or bulk.get(str(entry[1])) or _gone()
            else:
                singles += [(position, stream, entry) for position, entry in items]
        if singles and not self._warm:
            position, stream, entry = singles.pop(0)
            results[position] = self._one(stream, entry)
            self._warm = True
        if singles:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="record-fetch")
            # Each task runs in its own copy of the run's context (its log fields).
            futures = [(position, self._pool.submit(contextvars.copy_context().run, self._one, stream, entry))
                       for position, stream, entry in singles]
            for position, future in futures:
                results[position] = future.result()
        return results

    def _one(self, stream, entry):
        params = {"stream": entry[0], "record_id": str(entry[1]), "deleted": False}
        try:
            return self._call(self.connector.read_page, stream, ReadRequest(mode="record", params=params), None)
        except Exception as exc:
            return exc

    def _call(self, method, *args):
        with self.app.app_context():  # connectors may store rotated tokens through the database
            return method(*args)

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _gone():
    return Page([], None, total=0)
