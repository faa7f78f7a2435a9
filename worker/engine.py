"""The sync loop: claim -> pages -> store -> checkpoint -> progress -> cancel check -> finish.

Every page is one transaction: its records, its record errors, the new checkpoint and the
counters commit together, and only while this attempt still owns the run. A crash at any
point therefore resumes from the last committed page: nothing lost, nothing doubled.
"""
import contextvars
import functools
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import joinedload

from webapp import metrics, rate_limit_waits, record_batches, retry_policy, runs
from webapp.connectors import connector_class
from webapp.connectors.base import ReadRequest, Services
from webapp.connectors.errors import BadRecord, ConfigError
from webapp.error_words import describe, internal_error_message, run_error_words
from webapp.extensions import db
from webapp.logs import log_context
from webapp.models import CANCELLED, COMPLETED, FAILED, QUEUED, WAITING, Connection, Run, StreamState, utcnow
from webapp.progress import ProgressPublisher

from . import store
from .record_fetch import RecordFetcher

log = logging.getLogger(__name__)
DATABASE_WAIT_SECONDS = 60  # how long a failed attempt waits for the database to requeue itself
# Records of a batched record run fetched, then written in one transaction, at a time: the
# checkpoint's grain (what a crash makes it fetch again). A provider with a bulk endpoint
# (Connector.read_records) answers a chunk in one request, so its chunks are larger: the
# request's latency is paid per chunk (docs/PERFORMANCE.md, issue 20 item 3).
RECORD_CHUNK = 50
RECORD_CHUNK_BULK = 200

class LostOwnership(Exception):
    """The run was cancelled, requeued or finished by someone else while we worked."""


def execute_run(run_id, *, redis_client=None, worker_name=None, on_progress=None):
    """Carry out one queued run. Returns its final status for this attempt (a requeued run
    returns "queued"), or None when the run was not ours to execute."""
    attempt = runs.claim(run_id, worker_name)
    if attempt is None:
        log.info("run %s: not claimable (already taken, finished or cancelled)", run_id)
        return None
    # The run with its connection in one SELECT (the engine reads both before its first page).
    run = db.session.get(Run, run_id, options=[joinedload(Run.connection)])
    with log_context(run_id=run_id, connection=run.connection.name, trigger=run.trigger, mode=run.mode,
                     attempt=attempt):
        log.info("run %s attempt %s started", run_id, attempt)
        execution = RunExecution(run_id, attempt, redis_client=redis_client, on_progress=on_progress)
        status = execution.run()
        log.info("run %s attempt %s ended: %s", run_id, attempt, status)
        return status


class RunExecution:
    def __init__(self, run_id, attempt, *, redis_client, on_progress):
        self.run_id = run_id
        self.attempt = attempt
        self.config = current_app.config
        self.redis = redis_client
        self.on_progress = on_progress
        self.progress = ProgressPublisher(redis_client, run_id, ttl=self.config["PROGRESS_TTL_SECONDS"])
        self.heartbeat = Heartbeat(current_app._get_current_object(), run_id, attempt, self.config["HEARTBEAT_SECONDS"])
        run = db.session.get(Run, run_id)
        self.connection_id = run.connection_id
        self.connection_name = run.connection.name
        self.mode = run.mode
        self.params = dict(run.params or {})
        self.requested_streams = list(run.streams or [])
        self.record_key = run.record_key
        self.checkpoint = dict(run.checkpoint or {})
        self.checkpoint.setdefault("done", [])
        self.checkpoint.setdefault("cursors", {})
        self.processed = run.processed
        self.total = run.total
        self.counters = run.counters
        self.stream_counters = {name: dict(c) for name, c in (run.stream_counters or {}).items()}
        self.processed_at_start = run.processed
        self.started = time.monotonic()
        # Rate-limit waits of this attempt not yet written to the run (webapp/rate_limit_waits.py).
        self.waits = rate_limit_waits.Tally()
        # Per stream of this attempt: {name: {"processed", "total", "done"}}, for the run page
        # and for overall progress over every stream (a run is not at 100% after its first).
        self.stream_progress = {}
        self.last_stream = None  # the last stream this run reads (its last page's publish waits for the end's)
        # Per stream, whether the last page this attempt wrote was all new records (a first
        # import): the next one probably is too, which the store writes more cheaply on SQLite
        # (worker/store.py). A stream's first page is tried as new if the stream was empty.
        self.importing = {}
        # Streams (and their derived streams) this attempt began with no live records stored:
        # every live record at the end was written during the run, so the end's sweep for
        # records the listing did not show has nothing to find (a first import: a pass over
        # every record saved).
        self.started_empty = set()
        self.announced = False
        self.dialect = db.engine.dialect.name

    # -- the straight line -------------------------------------------------------------
    def run(self):
        with rate_limit_waits.counting(self.waits):
            return self._run()

    def _run(self):
        self.heartbeat.start()
        try:
            connection = db.session.get(Connection, self.connection_id)
            connector = self.connector = self._connector(connection)
            if self.mode != "record":
                self.stream_progress = {name: {"processed": 0, "total": None, "done": name in self.checkpoint["done"]}
                                        for name in self._read_streams(connector)}
                self.last_stream = self._read_streams(connector)[-1]
            if self.mode == "record":
                self._announce()
            if self.mode == "record" and "records" in self.params:
                if self._sync_records(connector) == CANCELLED:
                    return CANCELLED
                deleted = 0
            elif self.mode == "record":
                deleted = self._sync_one_record(connector)
            else:
                for stream_name in self._read_streams(connector):
                    if stream_name in self.checkpoint["done"]:
                        continue
                    if self._sync_stream(connector, connector.stream(stream_name)) == CANCELLED:
                        return CANCELLED
                self._announce()  # every stream was done before this attempt
                deleted = 0
            return self._complete(connector, deleted)
        except LostOwnership as exc:
            db.session.rollback()
            log.warning("run %s attempt %s: stopped, %s", self.run_id, self.attempt, exc)
            return None
        except Exception as exc:
            status = self._after_failure(exc)
            if status is None:
                # The run was resumed elsewhere meanwhile (its heartbeat went stale: a worker cut off by a
                # network partition, docs/RELIABILITY.md): the conditional change wrote nothing; say so.
                log.warning("run %s attempt %s: stopped, the run is no longer running this attempt (after %s)",
                            self.run_id, self.attempt, type(exc).__name__)
            return status
        finally:
            self.heartbeat.stop()

    def _after_failure(self, exc):
        """What a failed attempt becomes is webapp/retry_policy.py's decision ("run"); None when
        the run is no longer this attempt's."""
        verdict = retry_policy.for_run(exc)
        if verdict.defer_seconds is not None:
            return self._defer(verdict.defer_seconds, exc)
        if verdict.retry:
            return self._retry(verdict.error_class, exc)
        if verdict.error_class == "internal":  # a bug: fail loudly with the class, never loop on it
            log.exception("run %s: unexpected error", self.run_id)
            return self._fail("internal", internal_error_message(self.run_id, exc))
        return self._fail(verdict.error_class, exc, health=verdict.health)

    def _streams(self, connector):
        return self.requested_streams or connector.default_streams()

    def _read_streams(self, connector):
        """The streams to read from the provider, in order. A derived stream is not read:
        asking for it reads its parent, whose pages produce it."""
        names = []
        for name in self._streams(connector):
            name = connector.stream(name).derived_from or name
            if name not in names:
                names.append(name)
        return names

    def _derived_of(self, name):
        return [s for s in self.connector.streams if s.derived_from == name]

    def _sync_stream(self, connector, stream):
        name = stream.name
        state = self.checkpoint.get("state") if self.checkpoint.get("stream") == name else None
        cursor = self._stored_cursor(name) if self.mode == "incremental" else None
        request = ReadRequest(mode=self.mode, params=self.params, cursor=cursor)
        done_before = self.processed if state is None else None
        prepare = functools.partial(self._prepare, stream)
        with PageFetcher(current_app._get_current_object(), connector, stream, request, prepare) as fetcher:
            # The first page downloads while the attempt is announced and the store is asked
            # what it holds: a run's fixed costs overlap the provider's latency.
            fetcher.fetch(state)
            self._announce()
            if state is None:
                for listed in [name] + [derived.name for derived in self._derived_of(name)]:
                    if not store.has_live_records(db.session, connection_id=self.connection_id, stream=listed):
                        self.started_empty.add(listed)
                self.importing[name] = name in self.started_empty
            while True:
                page, prepared = fetcher.result()
                if page.next_state is not None:
                    fetcher.fetch(page.next_state)  # the next page downloads while this one is written
                if self._write_page(stream, page, done_before, prepared):
                    return CANCELLED
                if page.next_state is None:
                    return None

    def _prepare(self, stream, page):
        """What a page's write needs that is pure computation (keys, validation, canonical
        JSON and hashes, the page's highest cursor): run in the fetch thread, so it overlaps
        the previous page's database work instead of adding to it."""
        good, bad = self._sort(stream, page, in_fetch_thread=True)
        rows = store.prepare_rows(good, for_sqlite=self.dialect == "sqlite")
        top = _highest_cursor((r for _, r in good), stream.cursor_field) if stream.cursor_field else None
        return PreparedPage(good, bad, rows, top)

    def _write_page(self, stream, page, done_before, prepared):
        """One transaction: records, record errors, checkpoint, counters. True if cancelled."""
        name = stream.name
        good, bad = prepared.good, prepared.bad
        counts = store.write_page(db.session, connection_id=self.connection_id, stream=name, run_id=self.run_id,
                                  rows=prepared.rows, expect_new=self.importing.get(name, True))
        self.importing[name] = counts.created == len(prepared.rows)
        for error in bad:
            if error.key is None and getattr(error, "page_position", None) is not None:
                error.key = f"record #{self.processed + error.page_position} of the run"
            runs.log_event(self.run_id, str(error), level="warning", kind="record_error",
                           stream=name, record_key=error.key)
        derived, derived_message = self._write_derived(stream, good)
        if prepared.top_cursor is not None:
            self._advance_seen_cursor(name, prepared.top_cursor)
        finished = page.next_state is None
        self.checkpoint["stream"], self.checkpoint["state"] = (None, None) if finished else (name, page.next_state)
        if finished:
            self.checkpoint["done"] = self.checkpoint["done"] + [name]
        self.processed += len(page.records) + len(page.bad_records)
        if page.total is not None and done_before is not None:
            self.total = done_before + page.total
        self._count_stream(name, page, finished, first=done_before is not None)
        delta = {"seen": len(good) + len(bad), "created": counts.created, "updated": counts.updated,
                 "unchanged": counts.unchanged, "failed": len(bad)}
        self._count_by_stream(name, delta)
        for child, child_delta in derived.items():
            self._count_by_stream(child, child_delta)
            _add(delta, child_delta)
        message = (f"{name}: +{len(good)} records ({counts.created} new, {counts.updated} changed, "
                   f"{counts.unchanged} unchanged" + (f", {len(bad)} skipped)" if bad else ")") + derived_message)
        cancel = self._commit_page(delta, total=self.total, phase=f"fetching {name}", stream=name)
        self._publish(f"fetching {name}", message, last=finished and name == self.last_stream)
        if cancel:
            self._cancelled()
            return True
        if self.heartbeat.lost:
            raise LostOwnership("heartbeat found the run taken away")
        return False

    def _commit_page(self, delta, *, total, phase, stream):
        """The page's checkpoint and counters, in the transaction that holds its records (a
        conditional UPDATE: LostOwnership when this attempt no longer owns the run); then the
        counters here and in the metrics. Returns whether a cancel was asked."""
        owned, cancel = runs.record_page(
            self.run_id, self.attempt, checkpoint=dict(self.checkpoint), counts=delta, processed=self.processed,
            total=total, phase=phase, stream_counters=self._stream_counters_copy(), waited=self.waits.take())
        if not owned:
            raise LostOwnership("the run is no longer running this attempt")
        db.session.commit()
        for key, value in delta.items():
            self.counters[key] += value
            if key != "seen" and value:
                metrics.inc("records", value, connection=self.connection_name, stream=stream, outcome=key)
        return cancel

    def _sync_one_record(self, connector):
        stream = connector.stream(self.params.get("stream") or self._streams(connector)[0])
        if stream.derived_from:
            raise ConfigError(f"stream {stream.name!r} is derived from {stream.derived_from!r}: "
                              f"sync a {stream.derived_from} record instead")
        record_id = str(self.params.get("record_id") or self.record_key.split(":", 1)[-1])
        if self.params.get("deleted"):
            page = None
        else:
            page = connector.read_page(stream, ReadRequest(mode="record", params=self.params), None)
        if page is None or not (page.records or page.bad_records):
            # The provider says it is gone (a delete webhook, or the lookup found nothing):
            # so are the records derived from it.
            deleted = store.soft_delete_one(db.session, connection_id=self.connection_id, stream=stream.name,
                                            external_id=record_id, run_id=self.run_id)
            self._count_by_stream(stream.name, {"deleted": deleted})
            for child in self._derived_of(stream.name):
                gone = store.soft_delete_derived(db.session, connection_id=self.connection_id,
                                                 stream=child.name, run_id=self.run_id,
                                                 parent_keys=[record_id], keep_keys=[])
                self._count_by_stream(child.name, {"deleted": gone})
                deleted += gone
            return deleted
        good, bad = self._sort(stream, page)
        counts = store.write_page(db.session, connection_id=self.connection_id, stream=stream.name,
                                  run_id=self.run_id, keyed_records=good)
        for error in bad:
            runs.log_event(self.run_id, str(error), level="warning", kind="record_error",
                           stream=stream.name, record_key=error.key)
        derived, _ = self._write_derived(stream, good)
        self.processed = len(page.records) + len(page.bad_records)
        self.counters.update(seen=len(good) + len(bad), created=counts.created, updated=counts.updated,
                             unchanged=counts.unchanged, failed=len(bad))
        self.stream_counters = {}
        self._count_by_stream(stream.name, self.counters)
        for child, child_delta in derived.items():
            self._count_by_stream(child, child_delta)
            _add(self.counters, child_delta)
        owned, _ = runs.record_page(self.run_id, self.attempt, checkpoint=None, counts=self.counters,
                                    processed=self.processed, total=self.processed, phase="record",
                                    stream_counters=self._stream_counters_copy(), waited=self.waits.take())
        if not owned:
            raise LostOwnership("the run is no longer running this attempt")
        return 0

    def _sync_records(self, connector):
        """A batched record run (webapp/record_batches.py): its records in chunks, each
        chunk fetched at once (worker/record_fetch.py) and written in one transaction with
        the checkpoint (the positions done), so a retried or resumed run fetches only what
        is left. A record that is bad, or that the provider refuses (a 4xx), fails alone:
        logged with the reason, its deliveries marked failed, the others stored. Any other
        error (an outage, a rate limit) ends the attempt after the chunk's other records
        are stored: the retry policy decides, and the retry fetches what is left."""
        entries = record_batches.entries_of(self.params)
        done = set(self.checkpoint.get("records_done") or [])
        todo = [(position, entry) for position, entry in enumerate(entries) if position not in done]
        self.total, self.processed = len(entries), len(done)
        fetcher = RecordFetcher(current_app._get_current_object(), connector,
                                self.config["RECORD_FETCH_CONCURRENCY"])
        size = RECORD_CHUNK_BULK if connector.has_bulk_reads() else RECORD_CHUNK
        chunks = [todo[start:start + size] for start in range(0, len(todo), size)]
        # The next chunk downloads while this one is written (as PageFetcher does for pages):
        # never more than one ahead, and the checkpoint only names written chunks.
        ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="record-chunk")
        try:
            future = ahead.submit(contextvars.copy_context().run, fetcher.fetch, chunks[0]) if chunks else None
            for number, chunk in enumerate(chunks):
                results = future.result()
                if number + 1 < len(chunks):
                    future = ahead.submit(contextvars.copy_context().run, fetcher.fetch, chunks[number + 1])
                fatal = self._write_records(connector, chunk, results, done, len(entries))
                if fatal is CANCELLED:
                    return CANCELLED
                if fatal is not None:
                    raise fatal
        finally:
            ahead.shutdown(wait=False, cancel_futures=True)
            fetcher.close()
        return None

    def _write_records(self, connector, chunk, results, done, total):
        """One transaction for a chunk of a batch. Returns CANCELLED, the error that ends
        the attempt, or None."""
        fatal, delta, good_by_stream, failed = None, _zero_counters(), {}, 0
        for position, entry in chunk:
            stream_name, record_id = entry[0], str(entry[1])
            result = results.get(position)
            if isinstance(result, Exception):
                if not _fails_alone(result):
                    fatal = fatal or result
                    continue
                self._record_failed(entry, f"{describe(result)}: {result}")
                self._count_by_stream(stream_name, {"seen": 1, "failed": 1})
                _add(delta, {"seen": 1, "failed": 1})
            elif result is None or not (result.records or result.bad_records):
                gone = self._soft_delete_record(stream_name, record_id)
                _add(delta, {"deleted": gone})
            else:
                stream = connector.stream(stream_name)
                good, bad = self._sort(stream, result, record_id=record_id)
                for error in bad:
                    error.key = error.key or record_id
                    self._record_failed(entry, str(error), stream=stream_name, key=error.key)
                good_by_stream.setdefault(stream_name, {}).update(good)
                self._count_by_stream(stream_name, {"seen": len(good) + len(bad), "failed": len(bad)})
                _add(delta, {"seen": len(good) + len(bad), "failed": len(bad)})
            done.add(position)
        for stream_name, keyed in good_by_stream.items():
            stream = connector.stream(stream_name)
            good = list(keyed.items())
            counts = store.write_page(db.session, connection_id=self.connection_id, stream=stream_name,
                                      run_id=self.run_id, keyed_records=good)
            written = {"created": counts.created, "updated": counts.updated, "unchanged": counts.unchanged}
            self._count_by_stream(stream_name, written)
            _add(delta, written)
            derived, _ = self._write_derived(stream, good)
            for child, child_delta in derived.items():
                self._count_by_stream(child, child_delta)
                _add(delta, child_delta)
        self.processed = len(done)
        self.checkpoint["records_done"] = sorted(done)
        cancel = self._commit_page(delta, total=total, phase="records", stream="*")
        self._publish("records", f"records: {self.processed} of {total} done "
                                 f"({delta['created']} new, {delta['updated']} changed, {delta['unchanged']} unchanged"
                                 + (f", {delta['deleted']} deleted" if delta["deleted"] else "")
                                 + (f", {delta['failed']} failed)" if delta["failed"] else ")"),
                      last=self.processed == total)
        if cancel:
            self._cancelled()
            return CANCELLED
        if self.heartbeat.lost:
            raise LostOwnership("heartbeat found the run taken away")
        return fatal

    def _record_failed(self, entry, reason, *, stream=None, key=None):
        """One record of a batch could not be synced: a record error on the run, and its
        deliveries say so (same transaction as the chunk)."""
        stream, key = stream or entry[0], key or str(entry[1])
        message = f"record {entry[0]}:{entry[1]} could not be synced: {reason}"
        runs.log_event(self.run_id, message, level="warning", kind="record_error", stream=stream, record_key=key)
        record_batches.mark_failed_deliveries(entry[3] if len(entry) > 3 else [], f"{message} (run {self.run_id})")

    def _soft_delete_record(self, stream_name, record_id):
        """The provider says the record is gone (a delete webhook, or the lookup found
        nothing): so are the records derived from it. Returns how many were marked."""
        deleted = store.soft_delete_one(db.session, connection_id=self.connection_id, stream=stream_name,
                                        external_id=record_id, run_id=self.run_id)
        self._count_by_stream(stream_name, {"deleted": deleted})
        for child in self._derived_of(stream_name):
            gone = store.soft_delete_derived(db.session, connection_id=self.connection_id, stream=child.name,
                                             run_id=self.run_id, parent_keys=[record_id], keep_keys=[])
            self._count_by_stream(child.name, {"deleted": gone})
            deleted += gone
        return deleted

    def _complete(self, connector, deleted):
        """Deletions and cursor advance commit in the same transaction as `completed`."""
        sweeps = self._sweeps(connector)
        # Only a sweep for deletions takes time here; otherwise the next word is "completed",
        # which carries this one.
        self._publish("finalizing", "finalizing", last=not sweeps)
        for listed in sweeps:
            gone = store.soft_delete_unseen(db.session, connection_id=self.connection_id, stream=listed.name,
                                            run_id=self.run_id)
            self._count_by_stream(listed.name, {"deleted": gone})
            deleted += gone
        if self.mode in ("full", "incremental"):
            for name, cursor in self.checkpoint["cursors"].items():
                self._store_cursor(name, cursor)
        if deleted:
            runs.log_event(self.run_id, f"{deleted} records no longer at the provider: marked deleted")
        # The connection's health commits with `completed` (one commit fewer per run).
        if not runs.finish(self.run_id, self.attempt, COMPLETED, counts={"deleted": deleted},
                           connection_name=self.connection_name,
                           stream_counters=self._stream_counters_copy(), waited=self.waits.take(),
                           connection_health=(self.connection_id, "ok", None)):
            raise LostOwnership("the run was finished by someone else")
        self.counters["deleted"] += deleted
        if deleted:
            metrics.inc("records", deleted, connection=self.connection_name, stream="*", outcome="deleted")
        self._publish("done", f"completed: {self._summary()}", status=COMPLETED)
        return COMPLETED

    def _sweeps(self, connector):
        """The streams whose stored records the listing did not show are marked deleted at the
        end: those a sync listed in full, except those that began this attempt empty (every
        live record in them was written by this run)."""
        if self.mode == "record":
            return []
        request = ReadRequest(mode=self.mode, params=self.params)
        sweeps = []
        for name in self._read_streams(connector):
            stream = connector.stream(name)
            if not connector.lists_all(stream, request):
                continue  # a narrowed listing says nothing about deletions
            sweeps += [listed for listed in [stream] + self._derived_of(name) if listed.name not in self.started_empty]
        return sweeps

    def _announce(self):
        """The attempt's first word to its watchers, once."""
        if not self.announced:
            self.announced = True
            self._publish("starting", f"attempt {self.attempt} started")

    # -- outcomes ----------------------------------------------------------------------
    def _cancelled(self):
        if runs.finish(self.run_id, self.attempt, CANCELLED, error_message="cancelled at a page boundary",
                       waited=self.waits.take(), connection_name=self.connection_name):
            self._publish("cancelled", "cancelled; records written so far are kept", status=CANCELLED)
            return CANCELLED
        raise LostOwnership("the run changed state while cancelling")

    def _fail(self, error_class, exc, health="failing"):
        db.session.rollback()
        message = str(exc) or describe(exc)
        if runs.finish(self.run_id, self.attempt, FAILED, error_class=error_class, error_message=message,
                       waited=self.waits.take(), connection_health=(self.connection_id, health, message),
                       connection_name=self.connection_name):
            self._publish("failed", f"failed ({run_error_words(error_class)}): {message}", status=FAILED)
            return FAILED
        return None

    def _retry(self, error_class, exc):
        message = str(exc) or describe(exc)
        pause = retry_policy.run_backoff(self.attempt, self.config["RUN_RETRY_BASE_SECONDS"],
                                         self.config["RUN_RETRY_MAX_SECONDS"])
        waited = self.waits.take()
        status = self._settle(lambda: runs.retry_later(self.run_id, self.attempt, error_class=error_class,
                                                       error_message=message, delay=pause, waited=waited))
        if status == FAILED:
            self._set_health("failing", message)
        if status:
            word = {QUEUED: "retrying", WAITING: "waiting"}.get(status, status)
            self._publish(word, f"{run_error_words(error_class)}: {message}"
                          + (f"; next attempt in {pause:.0f}s" if pause else ""),
                          status=status)
        return status

    def _defer(self, seconds, exc):
        """The provider asked us to come back later than a worker may wait: give the
        attempt back and wait (webapp/retry_policy.py)."""
        reason = f"waiting for {self.connector.provider_name()}'s rate limit"
        waited = self.waits.take()
        status = self._settle(lambda: runs.defer(self.run_id, self.attempt, seconds=seconds, reason=reason,
                                                 waited=waited))
        if status == FAILED:
            self._set_health("failing", str(exc))
        if status:
            self._publish(status, f"{reason} ({exc})", status=status)
        log.warning("run %s: %s (%s)", self.run_id, reason, exc)
        return status

    def _settle(self, change):
        """Apply a state change after a failed attempt. A database restart fails the page and
        then this change too; giving up at once left the run `running` until the stale sweep
        (STALE_AFTER_SECONDS, 180 s by default). Wait for the server a while instead (the
        heartbeat goes on meanwhile), then leave it to the sweep."""
        deadline = time.monotonic() + DATABASE_WAIT_SECONDS
        delay = 0.2
        while True:
            try:
                db.session.rollback()
                return change()
            except OperationalError:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- helpers -----------------------------------------------------------------------
    def _connector(self, connection):
        services = Services(config=dict(self.config), redis=self.redis, connection_id=connection.id)
        cls = connector_class(connection.connector)
        return cls(connection.settings or {}, connection.credentials, services)

    def _write_derived(self, stream, good):
        """Write the derived streams of `stream` for this page's parents (same transaction):
        each parent's derived set is replaced, surplus records soft-deleted. Returns counter
        deltas ({child stream: its counters}) and a log fragment."""
        delta, message = {}, ""
        for child in self._derived_of(stream.name):
            keyed, bad = [], []
            for parent_key, parent in good:
                for record in self.connector.derive(child, parent_key, parent):
                    try:
                        key = child.key_of(record)
                        if not key.startswith(parent_key + ":"):
                            raise BadRecord(f"derived key {key!r} does not start with {parent_key + ':'!r}", key=key)
                        self.connector.validate(child, record)
                        keyed.append((key, record))
                    except BadRecord as exc:
                        bad.append(exc)
            counts = store.write_page(db.session, connection_id=self.connection_id, stream=child.name,
                                      run_id=self.run_id, keyed_records=keyed)
            removed = store.soft_delete_derived(db.session, connection_id=self.connection_id, stream=child.name,
                                                run_id=self.run_id, parent_keys=[k for k, _ in good],
                                                keep_keys=[k for k, _ in keyed])
            for error in bad:
                runs.log_event(self.run_id, str(error), level="warning", kind="record_error",
                               stream=child.name, record_key=error.key)
            delta[child.name] = {"seen": len(keyed) + len(bad), "created": counts.created, "updated": counts.updated,
                                 "unchanged": counts.unchanged, "failed": len(bad), "deleted": removed}
            message += (f"; {child.name}: {len(keyed)} derived ({counts.created} new, {counts.updated} changed, "
                        f"{removed} removed" + (f", {len(bad)} skipped)" if bad else ")"))
        return delta, message

    def _count_by_stream(self, name, delta):
        _add(self.stream_counters.setdefault(name, _zero_counters()), {k: v for k, v in delta.items() if v})

    def _stream_counters_copy(self):
        return {name: dict(counters) for name, counters in self.stream_counters.items()}

    def _sort(self, stream, page, in_fetch_thread=False, record_id=None):
        """(keyed good records, BadRecord errors). In the fetch thread the run's position of a
        keyless record is not known yet (the page before may still be written): the error
        keeps its place in the page and _write_page names it."""
        good, bad = [], list(page.bad_records)
        for position, record in enumerate(page.records, start=1 if in_fetch_thread else self.processed + 1):
            try:
                key = stream.key_of(record)
                self.connector.validate(stream, record)
                good.append((key, record))
            except BadRecord as exc:
                if exc.key is None and isinstance(record, dict) and record.get(stream.primary_key) is not None:
                    exc.key = str(record.get(stream.primary_key))
                if exc.key is None and record_id is not None:  # a record fetched by its id: that id
                    exc.key = record_id
                    exc.args = (f"{exc}; it begins {_excerpt(record)}",)
                if exc.key is None:  # nothing to find it by: where it came in the run, and how it begins
                    if in_fetch_thread:
                        exc.page_position = position
                    else:
                        exc.key = f"record #{position} of the run"
                    exc.args = (f"{exc}; it begins {_excerpt(record)}",)
                bad.append(exc)
        return good, bad

    def _advance_seen_cursor(self, name, value):
        best = self.checkpoint["cursors"].get(name)
        if best is None or _cursor_gt(value, best):
            self.checkpoint["cursors"] = dict(self.checkpoint["cursors"], **{name: value})

    def _stored_cursor(self, name):
        state = db.session.get(StreamState, (self.connection_id, name))
        return state.cursor if state else None

    def _store_cursor(self, name, cursor):
        state = db.session.get(StreamState, (self.connection_id, name))
        if state is None:
            db.session.add(StreamState(connection_id=self.connection_id, stream=name, cursor=cursor,
                                       updated_by_run_id=self.run_id))
        elif state.cursor is None or _cursor_gt(cursor, state.cursor):
            state.cursor, state.updated_at, state.updated_by_run_id = cursor, utcnow(), self.run_id

    def _set_health(self, health, message):
        try:
            db.session.execute(update(Connection).where(Connection.id == self.connection_id)
                               .values(health=health, health_message=message))
            db.session.commit()
        except OperationalError:
            db.session.rollback()

    def _summary(self):
        c = self.counters
        return (f"{c['seen']} seen, {c['created']} created, {c['updated']} updated, {c['unchanged']} unchanged, "
                f"{c['deleted']} deleted, {c['failed']} skipped")

    def _count_stream(self, name, page, finished, first):
        progress = self.stream_progress.setdefault(name, {"processed": 0, "total": None, "done": False})
        progress["processed"] += len(page.records) + len(page.bad_records)
        if first and page.total is not None:
            progress["total"] = page.total
        progress["done"] = progress["done"] or finished

    def _overall_percent(self):
        """With several streams: each counts for an equal share, a finished one in full, the
        others by their own processed/total (nothing while their total is unknown). One
        stream: processed/total as before."""
        if len(self.stream_progress) > 1:
            shares = [1.0 if p["done"] else min(1.0, p["processed"] / p["total"]) if p["total"] else 0.0
                      for p in self.stream_progress.values()]
            return round(100.0 * sum(shares) / len(shares), 1)
        return round(min(100.0, 100.0 * self.processed / self.total), 1) if self.total else None

    def _remaining(self):
        """Records left to read, when every unfinished stream has told its total; else None."""
        if len(self.stream_progress) > 1:
            left = [p for p in self.stream_progress.values() if not p["done"]]
            if any(p["total"] is None for p in left):
                return None
            return sum(max(0, p["total"] - p["processed"]) for p in left)
        return self.total - self.processed if self.total else None

    def _publish(self, phase, message, status="running", last=False):
        """`last`: another publish follows at once (the run's end), carrying this message
        too; a message alone then, not a round trip to Redis (docs/PERFORMANCE.md)."""
        if last and status == "running":
            self.progress.add_message(message)
            return
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = (self.processed - self.processed_at_start) / elapsed
        percent = 100.0 if status == COMPLETED else self._overall_percent()
        eta = self._remaining() / rate if rate > 0 and status == "running" and self._remaining() else None
        self.progress.add_message(message)
        snapshot = self.progress.publish({
            "status": status, "phase": phase, "attempt": self.attempt, "processed": self.processed,
            "total": self.total, "percent": percent, "rate": round(rate, 1),
            "eta_seconds": round(eta, 1) if eta is not None else None, "counters": dict(self.counters),
            "streams": [dict(progress, name=name) for name, progress in self.stream_progress.items()],
        })
        if self.on_progress:
            self.on_progress(snapshot)


def _fails_alone(exc):
    """A record's own fault, not the provider's or ours: a bad record, or a request the
    provider refuses for that record (a 4xx other than 401/403/429, a stream that cannot
    be read by id). The batch goes on without it."""
    return isinstance(exc, (BadRecord, ConfigError))


def _zero_counters():
    return {"seen": 0, "created": 0, "updated": 0, "unchanged": 0, "deleted": 0, "failed": 0}


def _add(counters, delta):
    for key, value in delta.items():
        counters[key] = counters.get(key, 0) + value


def _highest_cursor(records, field):
    values = [value for value in (record.get(field) for record in records) if value is not None]
    try:
        # max() keeps the first of equal values and compares with ">" as _cursor_gt does, in C.
        return max(values, default=None)
    except TypeError:  # values of mixed types: compared as text where they cannot be compared
        best = None
        for value in values:
            if best is None or _cursor_gt(value, best):
                best = value
        return best


@dataclass
class PreparedPage:
    good: list  # [(key, record)]
    bad: list  # [BadRecord]
    rows: dict  # store.prepare_rows(good, ...)
    top_cursor: object  # the highest cursor value among good records, or None


def _cursor_gt(a, b):
    try:
        return a > b
    except TypeError:
        return str(a) > str(b)


class PageFetcher:
    """Reads the next page in a background thread while the engine writes the current one,
    so the provider's latency and the database's overlap. Never more than one page ahead:
    memory stays bounded by the page size, and the checkpoint only ever names written pages."""

    def __init__(self, app, connector, stream, request, prepare):
        """`prepare(page)`: the CPU work on a page that can run here too (RunExecution._prepare)."""
        self.app, self.connector, self.stream, self.request, self.prepare = app, connector, stream, request, prepare
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="page-fetch")
        self._future = None

    def _read(self, state):
        with self.app.app_context():  # connectors may store rotated tokens through the DB
            page = self.connector.read_page(self.stream, self.request, state)
        return page, self.prepare(page)

    def fetch(self, state):
        # The thread logs (retries, waits) under the run's log context too.
        self._future = self._pool.submit(contextvars.copy_context().run, self._read, state)

    def result(self):
        return self._future.result()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        # On cancel or error a fetch may still be in flight: don't wait for it.
        self._pool.shutdown(wait=False, cancel_futures=True)


class Heartbeat:
    """Refreshes the run's heartbeat from a thread, so a page stuck in a long provider wait
    still proves the worker is alive. Stops on its own if the run is no longer ours."""

    def __init__(self, app, run_id, attempt, interval):
        self.app, self.run_id, self.attempt, self.interval = app, run_id, attempt, interval
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-run-{run_id}", daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self):
        with self.app.app_context():
            while not self._stop.wait(self.interval):
                try:
                    with db.engine.begin() as conn:
                        result = conn.execute(update(Run).where(*runs.owned(self.run_id, self.attempt))
                                              .values(heartbeat_at=utcnow()))
                    if result.rowcount != 1:
                        self.lost = True
                        return
                except Exception as exc:  # a database blip must not kill the thread
                    log.warning("run %s: heartbeat failed (%s)", self.run_id, type(exc).__name__)


def _excerpt(record, length=80):
    text = json.dumps(record, default=str, sort_keys=True) if isinstance(record, (dict, list)) else repr(record)
    return text if len(text) <= length else text[:length - 1] + "…"
