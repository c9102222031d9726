"""Serving client: the newest calibrator versions, applied along the fallback chain.

Serving layers hold a ``CalibratorClient`` and call ``calibrate`` per prediction. The client
is fed calibrator versions (DESIGN §3 "calibrator version") from the compacted topic
``recal.calibrators`` (``subscribe``, a background consumer in ``worker.client_kafka``,
imported only when used), from a snapshot directory (``load``) or from replay's
``calibrators.jsonl`` (``from_jsonl``).

This module imports no runtime, faust, aiokafka or pipeline/policy code: serving must not pull
in the consumer loop. The formulas come from ``worker.core.calibrators`` (their one owner);
importing it loads numpy and scipy (scikit-learn only when an isotonic map is fitted, which
serving never does), but no I/O or runtime module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import numpy as np
from numpy.typing import ArrayLike, NDArray

from worker.core.calibrators import (
    Calibrator,
    ContextualCalibrator,
    IdentityCalibrator,
    calibrator_from_dict,
)
from worker.core.checks import MAX_TS, timestamp
from worker.core.errors import InvalidInputError
from worker.core.records.scope import GLOBAL, SEGMENT_PREFIX, USER_PREFIX

if TYPE_CHECKING:
    from worker.client_kafka import CalibratorSubscription

log = logging.getLogger(__name__)

__all__ = ["CalibratorClient", "Resolution", "Staleness", "validate_version"]

IDENTITY = "identity"
STORE_FILE = "store.json"
STORE_FORMAT = 1
_SCOPES_DIR = "scopes"
# Longest scope file name kept readable; longer (quoted) keys fall back to a hash, because
# file systems stop at 255 bytes and a quoted 128-character user id can triple in length.
_MAX_NAME = 200

_SCOPE_RE = re.compile(r"^(global|segment:.+|user:.+)$", re.DOTALL)
# The schema's iso_utc pattern: UTC only, so ages never depend on a local time zone.
_ISO_UTC_RE = re.compile(
    r"^([0-9]{4}|[+-][0-9]{6,})-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"(Z|\+00:00)$"
)
_REQUIRED = (
    "model_id", "scope", "version", "method", "params", "event_ts", "created_at",
    "training", "metrics", "reason",
)
_TRAINING = ("n", "positives", "from_ts", "to_ts")
_METRICS = ("ece_before", "ece_after", "nll_before", "nll_after", "n_eval", "ece_floor")
_REASONS = ("bootstrap", "scheduled", "drift")
_IDENTITY_CAL = IdentityCalibrator()

Outcome = Literal["applied", "stale", "withdrawn", "ignored"]


def _bad(message: str, reason: str = "schema") -> InvalidInputError:
    return InvalidInputError(reason, message)


def _is_id(value: object) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 128


def _created_ms(text: str) -> int | None:
    """Epoch ms of a ``created_at``; None for the expanded years ``datetime`` cannot hold."""
    try:
        # fromisoformat keeps at most microseconds; the schema allows up to nanoseconds.
        head, dot, frac = text.partition(".")
        if dot:
            digits = frac.rstrip("Z").removesuffix("+00:00")
            text = f"{head}.{(digits + '000000')[:6]}+00:00"
        return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except (ValueError, OverflowError):
        return None


def validate_version(value: object, key: str | None = None) -> tuple[dict[str, Any], Calibrator]:
    """Check one calibrator version message (DESIGN §3) and build its calibrator.

    Raises ``InvalidInputError`` with a message naming the field. Unknown fields are
    accepted (a newer worker may add some; serving must not drop a calibrator for it), but
    everything a consumer relies on is checked: the key, scope, version, calibrator and the
    ISO UTC ``created_at``.

    >>> msg, cal = validate_version({"model_id": "m", "scope": "global", "version": 1,
    ...     "method": "temperature", "params": {"temperature": 2.0}, "event_ts": 0,
    ...     "created_at": "2026-01-01T00:00:00.000Z", "reason": "bootstrap",
    ...     "training": {"n": 0, "positives": 0, "from_ts": None, "to_ts": None},
    ...     "metrics": dict.fromkeys(["ece_before", "ece_after", "nll_before", "nll_after",
    ...                               "n_eval", "ece_floor"], 0)}, key="m|global")
    >>> cal
    TemperatureCalibrator({'temperature': 2.0})
    >>> validate_version({"model_id": "m"}, key="m|global")
    Traceback (most recent call last):
    ...
    worker.core.errors.InvalidInputError: calibrator version misses scope, version, method, params, event_ts, created_at, training, metrics, reason
    """  # noqa: E501
    if not isinstance(value, Mapping):
        raise _bad(f"a calibrator version must be an object or null; got {type(value).__name__}")
    missing = [name for name in _REQUIRED if name not in value]
    if missing:
        raise _bad(f"calibrator version misses {', '.join(missing)}")
    model_id, scope, version = value["model_id"], value["scope"], value["version"]
    if not _is_id(model_id):
        raise _bad(f"model_id must be a string of 1 to 128 characters; got {model_id!r}")
    if not isinstance(scope, str) or not _SCOPE_RE.match(scope):
        raise _bad(f"scope must be global, segment:<name> or user:<id>; got {scope!r}")
    if key is not None and key != f"{model_id}|{scope}":
        raise _bad(f"key must be model_id|scope ({model_id}|{scope}); got {key!r}", "key_mismatch")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_TS:
        raise _bad(f"version must be an integer >= 1; got {version!r}")
    timestamp("event_ts", value["event_ts"])
    created = value["created_at"]
    if not isinstance(created, str) or not _ISO_UTC_RE.match(created):
        raise _bad(f"created_at must be an ISO 8601 UTC time; got {created!r}")
    if value["reason"] not in _REASONS:
        raise _bad(f"reason must be one of {list(_REASONS)}; got {value['reason']!r}")
    for name, fields in (("training", _TRAINING), ("metrics", _METRICS)):
        part = value[name]
        if not isinstance(part, Mapping) or any(f not in part for f in fields):
            raise _bad(f"{name} must be an object with {', '.join(fields)}; got {part!r}")
    conformal = value.get("conformal")
    if conformal is not None and not (
        isinstance(conformal, Mapping)
        and _unit(conformal.get("alpha"), open_=True)
        and _unit(conformal.get("qhat"))
    ):
        raise _bad(f"conformal must be {{alpha in (0, 1), qhat in [0, 1]}}; got {conformal!r}")
    if value["method"] == IDENTITY and value["params"] != {}:
        # The factory ignores extra params; the schema says identity has none.
        raise _bad(f"identity calibrator takes no params; got {value['params']!r}")
    return dict(value), calibrator_from_dict(value)


def _unit(value: object, open_: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    v = float(value)
    return 0.0 < v < 1.0 if open_ else 0.0 <= v <= 1.0


@dataclass(frozen=True)
class _Entry:
    """One held version: the message, its calibrator, and when it arrived (wall ms)."""

    message: Mapping[str, Any]
    calibrator: Calibrator
    version: int
    created_ms: int | None
    received_ms: float


@dataclass(frozen=True)
class Resolution:
    """Which version serves a prediction: ``scope`` is the scope that matched (``user:<id>``,
    ``segment:<name>``, ``global``) or ``identity`` when none did (``version`` is then None)."""

    model_id: str
    scope: str
    version: int | None
    method: str
    calibrator: Calibrator


@dataclass(frozen=True)
class Staleness:
    """Ages in milliseconds at ``now_ms`` (None when there is nothing to measure).

    ``since_created_ms``: since the newest held version's ``created_at`` (wall clock at
    publication); ``since_event_ms``: since its newest ``event_ts`` (the worker's event-time
    watermark, so it includes the pipeline's lag behind real time); ``since_message_ms``:
    since the last record of any kind arrived (a quiet topic is normal when nothing drifts,
    so alert on this together with the worker's own health, not alone).
    """

    versions: int
    since_created_ms: float | None
    since_event_ms: float | None
    since_message_ms: float | None


def _wall_ms() -> float:
    return time.time() * 1000.0


class CalibratorClient:
    """The newest calibrator version per ``model_id|scope``, for serving (DESIGN §3).

    ``calibrate`` resolves user → segment → global → identity: the newest version of
    ``user:<id>``, else ``segment:<name>``, else ``global``, else the raw score. ``apply``
    takes one record of the compacted calibrator topic: versions not newer than the held
    one are ignored, a null value (tombstone) withdraws its key, and a malformed record
    raises ``InvalidInputError`` (counted in ``stats()``) while the previous version keeps
    serving. Thread-safe: writers swap in a new mapping under a lock (copy on write), so
    readers never lock and always see one consistent set of versions.

    ``context`` feeds a ``contextual`` version (DESIGN §3): a mapping with ``ts`` (epoch ms)
    or ``hour`` (UTC hour of day), ``position`` and the configured ``context`` fields; the
    ``segment`` argument is added as its ``segment`` unless it holds one. Other methods
    ignore it, and a contextual version without it serves its context-free map.

    >>> client = CalibratorClient()
    >>> base = {"model_id": "m", "event_ts": 0, "created_at": "2026-01-01T00:00:00Z",
    ...         "reason": "scheduled", "training": {"n": 1, "positives": 1, "from_ts": 0,
    ...         "to_ts": 0}, "metrics": dict.fromkeys(["ece_before", "ece_after",
    ...         "nll_before", "nll_after", "n_eval", "ece_floor"])}
    >>> client.apply("m|global", {**base, "scope": "global", "version": 3,
    ...     "method": "temperature", "params": {"temperature": 2.0}})
    'applied'
    >>> client.apply("m|user:u1", {**base, "scope": "user:u1", "version": 1,
    ...     "method": "platt", "params": {"a": 1.0, "b": 1.0}})
    'applied'
    >>> round(client.calibrate(0.9, "m", user_id="u2", segment="new"), 4)  # global
    0.75
    >>> client.resolve("m", user_id="u1").scope
    'user:u1'
    >>> client.apply("m|global", {**base, "scope": "global", "version": 2,
    ...     "method": "identity", "params": {}})
    'stale'
    >>> client.apply("m|user:u1", None)
    'withdrawn'
    >>> client.resolve("m", user_id="u1").scope, client.resolve("other").scope
    ('global', 'identity')
    """

    def __init__(self, clock: Callable[[], float] = _wall_ms) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        # Replaced, never mutated, under the lock: a reader's one attribute read is atomic.
        self._entries: Mapping[str, _Entry] = MappingProxyType({})
        # Versions of withdrawn keys, so a re-delivered older version cannot resurrect one.
        self._withdrawn: dict[str, int] = {}
        self._counts = {"applied": 0, "stale": 0, "withdrawn": 0, "ignored": 0, "rejected": 0}
        self._last_error: str | None = None
        self._last_message_ms: float | None = None
        self._subscription: CalibratorSubscription | None = None

    # ------------------------------------------------------------------ updates

    def apply(self, key: str | bytes | None, value: object) -> Outcome:
        """Apply one calibrator-topic record; returns what it did.

        ``value`` is the decoded message (a mapping), its JSON text or bytes, or None for a
        tombstone. ``key`` is ``model_id|scope`` (None: taken from the value; a tombstone
        needs it). Outcomes: ``applied``, ``stale`` (version ≤ the held one), ``withdrawn``
        (tombstone of a held key), ``ignored`` (tombstone of a key not held).
        """
        now = self._clock()
        with self._lock:
            self._last_message_ms = now
            try:
                k = key.decode("utf-8") if isinstance(key, bytes) else key
                if isinstance(value, (bytes, str)):
                    value = _loads(value)
                outcome = self._withdraw(k) if value is None else self._put(k, value, now)
            except (InvalidInputError, UnicodeDecodeError) as exc:
                self._counts["rejected"] += 1
                self._last_error = str(exc)
                if isinstance(exc, UnicodeDecodeError):
                    raise _bad(f"key must be UTF-8: {exc}") from exc
                raise
            self._counts[outcome] += 1
            return outcome

    def _withdraw(self, key: str | None) -> Outcome:
        if key is None:
            raise _bad("a tombstone (null value) needs its key model_id|scope")
        held = self._entries.get(key)
        if held is None:
            return "ignored"
        entries = dict(self._entries)
        del entries[key]
        self._withdrawn[key] = held.version
        self._entries = MappingProxyType(entries)
        return "withdrawn"

    def _put(self, key: str | None, value: object, now: float) -> Outcome:
        msg, cal = validate_version(value, key)
        k = f"{msg['model_id']}|{msg['scope']}"
        held = self._entries.get(k)
        floor = held.version if held is not None else self._withdrawn.get(k, 0)
        if msg["version"] <= floor:
            return "stale"
        created = _created_ms(msg["created_at"])
        entry = _Entry(MappingProxyType(msg), cal, msg["version"], created, now)
        self._entries = MappingProxyType({**self._entries, k: entry})
        self._withdrawn.pop(k, None)
        return "applied"

    def apply_all(self, values: Iterable[object]) -> None:
        """``apply`` each version message in order, the key taken from each message."""
        for value in values:
            self.apply(None, value)

    # ------------------------------------------------------------------ serving

    def resolve(
        self,
        model_id: str,
        user_id: str | None = None,
        segment: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Resolution:
        """The version that serves (model_id, user, segment): user → segment → global →
        identity (DESIGN §3)."""
        entries = self._entries
        scopes = []
        if user_id is not None:
            scopes.append(USER_PREFIX + user_id)
        if segment is not None:
            scopes.append(SEGMENT_PREFIX + segment)
        scopes.append(GLOBAL)
        for scope in scopes:
            entry = entries.get(f"{model_id}|{scope}")
            if entry is not None:
                return Resolution(model_id, scope, entry.version, entry.calibrator.method,
                                  entry.calibrator)
        return Resolution(model_id, IDENTITY, None, IDENTITY, _IDENTITY_CAL)

    def calibrate(
        self,
        score: float,
        model_id: str,
        user_id: str | None = None,
        segment: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> float:
        """Calibrated probability of raw ``score`` in [0, 1] (``InvalidInputError`` if not)."""
        cal = self.resolve(model_id, user_id, segment, context).calibrator
        if isinstance(cal, ContextualCalibrator):
            if segment is not None and (context is None or "segment" not in context):
                context = {**(context or {}), "segment": segment}
            return float(cal.apply(score, context))
        return float(cal.apply(score))

    def calibrate_many(
        self,
        scores: ArrayLike,
        model_id: str,
        user_ids: Sequence[str | None] | None = None,
        segments: Sequence[str | None] | None = None,
    ) -> NDArray[np.float64]:
        """``calibrate`` for a batch (one model): rows that resolve to the same version are
        applied together, so the cost is one vectorised call per distinct version."""
        s = np.asarray(scores, dtype=np.float64)
        n = s.shape[0] if s.ndim == 1 else -1
        if n < 0 or (user_ids is not None and len(user_ids) != n) or (
            segments is not None and len(segments) != n
        ):
            raise _bad("scores must be one-dimensional, with user_ids/segments of its length")
        groups: dict[tuple[str, int | None], tuple[Calibrator, list[int]]] = {}
        for i in range(n):
            res = self.resolve(
                model_id,
                None if user_ids is None else user_ids[i],
                None if segments is None else segments[i],
            )
            groups.setdefault((res.scope, res.version), (res.calibrator, []))[1].append(i)
        result = np.empty(n, dtype=np.float64)
        for cal, rows in groups.values():
            result[rows] = cal.apply(s[rows])
        return result

    # ------------------------------------------------------------------ introspection

    def versions(self) -> dict[str, dict[str, Any]]:
        """Every held version message by key ``model_id|scope`` (copies)."""
        return {k: json.loads(json.dumps(dict(e.message))) for k, e in self._entries.items()}

    def stats(self) -> dict[str, Any]:
        """Record counts by outcome, including ``rejected``, and the last rejection's error."""
        with self._lock:
            return {**self._counts, "versions": len(self._entries), "last_error": self._last_error}

    def staleness(self, now_ms: float | None = None) -> Staleness:
        """Ages of the held versions as a whole (see ``Staleness``)."""
        return self._ages(list(self._entries.values()), now_ms)

    def age(self, model_id: str, scope: str, now_ms: float | None = None) -> Staleness | None:
        """Ages of one key's version (``since_message_ms``: since it arrived); None if not
        held."""
        entry = self._entries.get(f"{model_id}|{scope}")
        if entry is None:
            return None
        return self._ages([entry], now_ms, entry.received_ms)

    def _ages(
        self, entries: list[_Entry], now_ms: float | None, last_ms: float | None = None
    ) -> Staleness:
        now = self._clock() if now_ms is None else now_ms
        created = [e.created_ms for e in entries if e.created_ms is not None]
        last = self._last_message_ms if last_ms is None else last_ms
        return Staleness(
            versions=len(entries),
            since_created_ms=now - max(created) if created else None,
            since_event_ms=now - max(e.message["event_ts"] for e in entries) if entries else None,
            since_message_ms=None if last is None else now - last,
        )

    # ------------------------------------------------------------------ sources

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike[str]) -> CalibratorClient:
        """A client fed replay's ``calibrators.jsonl`` in file order, as ``apply`` would be.

        A line ``{"key": ..., "value": null}`` is a tombstone (replay writes none today).
        """
        client = cls()
        with open(path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    if isinstance(obj, dict) and set(obj) == {"key", "value"}:
                        client.apply(obj["key"], obj["value"])
                    else:
                        client.apply(None, obj)
                except (ValueError, InvalidInputError) as exc:
                    raise _bad(f"{path}:{line_no}: {exc}") from exc
        return client

    def subscribe(
        self,
        bootstrap: str,
        topic: str = "recal.calibrators",
        **consumer_config: Any,
    ) -> CalibratorSubscription:
        """Start a background consumer of the compacted calibrator topic feeding ``apply``
        (from the beginning, committed records only); ``close()`` stops it.

        ``wait_caught_up(timeout_s)`` on the result blocks until every record that existed
        at subscription has been applied. Extra keyword arguments go to aiokafka's consumer.
        """
        from worker.client_kafka import CalibratorSubscription

        if self._subscription is not None:
            raise RuntimeError("this client already has a subscription; close() it first")
        self._subscription = CalibratorSubscription(self, bootstrap, topic, consumer_config)
        self._subscription.start()
        return self._subscription

    def close(self) -> None:
        """Stop the subscription, if any (the held versions keep serving)."""
        sub, self._subscription = self._subscription, None
        if sub is not None:
            sub.stop()

    # ------------------------------------------------------------------ snapshots

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write a snapshot directory: one JSON file per scope under ``scopes/`` and
        ``store.json`` (model ids, creation time, scopes and their files), each written to a
        temporary file and renamed, ``store.json`` last, so a reader sees the old snapshot
        or the new one, never a mix. Files of the previous snapshot not listed are removed.
        """
        root = Path(directory)
        scopes_dir = root / _SCOPES_DIR
        scopes_dir.mkdir(parents=True, exist_ok=True)
        entries = self._entries
        listed = []
        for key in sorted(entries):
            msg = dict(entries[key].message)
            name = f"{_SCOPES_DIR}/{scope_file_name(key)}"
            _write_atomic(root / name, msg)
            listed.append({"key": key, "model_id": msg["model_id"], "scope": msg["scope"],
                           "version": msg["version"], "file": name})
        store = {
            "format": STORE_FORMAT,
            "model_ids": sorted({item["model_id"] for item in listed}),
            "created_at": datetime.fromtimestamp(self._clock() / 1000.0, tz=timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "scopes": listed,
        }
        _write_atomic(root / STORE_FILE, store)
        keep = {Path(item["file"]).name for item in listed}
        for path in scopes_dir.iterdir():
            if path.name not in keep and path.suffix == ".json":
                path.unlink(missing_ok=True)
        return root

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CalibratorClient:
        """A client holding a ``save``d snapshot; every version is validated as by ``apply``."""
        root = Path(directory)
        try:
            store = json.loads((root / STORE_FILE).read_text(encoding="utf-8"))
            if store.get("format") != STORE_FORMAT:
                raise _bad(f"unsupported snapshot format {store.get('format')!r}")
            client = cls()
            for item in store["scopes"]:
                msg = json.loads((root / item["file"]).read_text(encoding="utf-8"))
                client.apply(item["key"], msg)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise _bad(f"unreadable calibrator snapshot {root}: {exc}") from exc
        return client


def scope_file_name(key: str) -> str:
    """A safe file name for any key: URL-quoted (no ``/``, no ``..``), or a hash when long.

    >>> scope_file_name("m|user:a/b")
    'm%7Cuser%3Aa%2Fb.json'
    """
    name = quote(key, safe="")
    if len(name) > _MAX_NAME:
        name = f"{name[:64]}~{hashlib.sha256(key.encode()).hexdigest()}"
    return f"{name}.json"


def _write_atomic(path: Path, obj: object) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(obj, handle, sort_keys=True, allow_nan=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _loads(raw: bytes | str) -> object:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise _bad(f"calibrator version is not valid JSON: {exc}", "invalid_json") from exc
