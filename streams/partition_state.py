"""What the stream layer keeps per partition, and its bytes.

Three kinds of keys live in the one `state` table (RocksDB, one database per
partition, changelog topic `<app id>-state-changelog`):

    u:<user_id>   a user's `UserState` (with its next deadline up front)
    p:<partition> the partition's `PartitionRecord`: input offsets, the
                  offsets held back for event-time order, the partition's
                  budget buckets (app.bucketing.Bucket), batch sequence
    r:<partition>[:<slot>]  the partition's redo records: every write and
                  output of one of its last batches (slot: its seq modulo
                  REDO_SLOTS), written first as one changelog message

Why a redo record: faust writes each key to the changelog separately, so a
crash can leave some keys of a batch written and others not. The redo record
makes a batch atomic: after a crash the worker re-applies it (the writes are
idempotent) and re-sends its outputs (consumers de-duplicate by event id).
The partition record, written last, says which batch the keys reflect.
The worker takes the next fetch before the brokers have acknowledged the
last one's records, so up to REDO_SLOTS - 1 batches can be unacknowledged:
each has its own slot, and a load re-applies and re-sends them all, oldest
first (`redo_batches`).
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import cramjam
import orjson

from app.bucketing import Bucket
from app.frozen import fast_init
from app.state import UserState
from app.state_codec import decode_user_state, encode_user_state
from schemas.native import kernel

# 5: the latest input applied (event-time order) and the inputs applied late
# behind it; 4: a bucket's 16th field (lease_wall); 3: progressive buckets; 2: held
# offsets as runs; 1: lists. Formats 1-3 are still read (a format-3 bucket
# reads with no clock); the buckets of 1 and 2 (a static split's plain
# counters) are not, since a static share was never granted by a master.
RECORD_FORMAT = 5
_READABLE = (1, 2, 3, 4, RECORD_FORMAT)
USER_PREFIX = b"u:"
_NO_DEADLINE = -1
_HEADER = struct.Struct(">q")


def user_key(user_id: str) -> bytes:
    return USER_PREFIX + user_id.encode()


def partition_key(partition: int) -> bytes:
    return b"p:%d" % partition


# Redo records kept per partition: one per batch, in slot `seq % REDO_SLOTS`,
# so the batches whose delivery the worker has not awaited yet (at most
# REDO_SLOTS - 1 of them: `Worker.settle`) each keep theirs.
REDO_SLOTS = 4


def redo_key(partition: int, slot: int = 0) -> bytes:
    """Slot 0 is the key every format before 0.3 wrote (`r:<partition>`)."""
    return b"r:%d" % partition if slot == 0 else b"r:%d:%d" % (partition, slot)


def redo_keys(partition: int) -> list[bytes]:
    return [redo_key(partition, slot) for slot in range(REDO_SLOTS)]


# ----------------------------------------------------------------- users


def encode_user(state: UserState) -> bytes:
    """The next deadline as a fixed header, so rebuilding the tick index after
    an assignment reads 8 bytes per user instead of decoding every state."""
    deadline = _NO_DEADLINE if state.next_deadline is None else state.next_deadline
    return _HEADER.pack(deadline) + encode_user_state(state)


def user_writes(states: Mapping[str, UserState | None]) -> list[tuple[bytes, bytes | None]]:
    """`(user_key(user_id), encode_user(state))` for each user, None to delete
    one: the same bytes in one loop, as a batch writes every changed user."""
    pack = _HEADER.pack
    encode_state = encode_user_state
    return [
        (
            USER_PREFIX + user_id.encode(),
            None
            if state is None
            else pack(_NO_DEADLINE if state.next_deadline is None else state.next_deadline)
            + encode_state(state),
        )
        for user_id, state in states.items()
    ]


def decode_user(raw: bytes | None) -> UserState | None:
    if raw is None:
        return None
    return decode_user_state(raw[_HEADER.size :])


def next_deadline_of_record(raw: bytes) -> int | None:
    (deadline,) = _HEADER.unpack_from(raw)
    return None if deadline == _NO_DEADLINE else int(deadline)


# ------------------------------------------------------------- partition


@dataclass(frozen=True, slots=True)
class PartitionRecord:
    partition: int
    seq: int = 0  # batches applied
    next_offset: Mapping[str, int] = field(default_factory=dict)  # by input role
    max_at: Mapping[str, int] = field(default_factory=dict)  # latest event time seen, by role
    # Offsets accepted but held back for event-time order, by role. Only the
    # offsets are kept: after a restart the worker fetches them again.
    held: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    buckets: Mapping[str, Bucket] = field(default_factory=dict)  # by pool id
    # The latest input applied in event-time order, as (at, role, offset)
    # (None: none yet), and how many inputs were applied late behind it
    # (streams.processor: each one is recorded as an `applied_late` event).
    max_applied: tuple[int, str, int] | None = None
    late_behind: int = 0

    def fetch_positions(self) -> dict[str, int]:
        """Where each input must be fetched from to lose nothing: its oldest
        held offset, else the next offset to accept (`held` is sorted)."""
        return {
            role: held[0] if (held := self.held.get(role)) else next_offset
            for role, next_offset in self.next_offset.items()
        }


def encode_partition(record: PartitionRecord) -> bytes:
    return orjson.dumps(
        [
            RECORD_FORMAT,
            record.partition,
            record.seq,
            dict(record.next_offset),
            dict(record.max_at),
            {role: _runs(offsets) for role, offsets in record.held.items() if offsets},
            [_bucket_fields(bucket) for _, bucket in sorted(record.buckets.items())],
            None if record.max_applied is None else list(record.max_applied),
            record.late_behind,
        ]
    )


def decode_partition(raw: bytes) -> PartitionRecord:
    doc = orjson.loads(raw)
    if not isinstance(doc, list) or not doc or doc[0] not in _READABLE:
        raise ValueError(f"not a partition record of format {_READABLE}")
    version, partition, seq, next_offset, max_at, held, buckets, *merge = doc
    expand = tuple if version == 1 else _expand
    max_applied, late_behind = merge if version >= 5 else (None, 0)
    return PartitionRecord(
        partition,
        seq,
        next_offset,
        max_at,
        {role: expand(offsets) for role, offsets in held.items()},
        {} if version < 3 else {b[0]: Bucket(*b) for b in buckets},
        None if max_applied is None else (max_applied[0], max_applied[1], max_applied[2]),
        late_behind,
    )


def _bucket_fields(bucket: Bucket) -> list[object]:
    return [
        bucket.pool_id,
        bucket.partition,
        bucket.received,
        bucket.returned,
        bucket.issued,
        bucket.in_seq,
        bucket.out_seq,
        bucket.waiting,
        bucket.denied,
        bucket.used,
        bucket.lease_at,
        bucket.last_at,
        bucket.last_grant,
        bucket.mode,
        bucket.refuse_from,
        bucket.lease_wall,
    ]


def _runs(offsets: tuple[int, ...]) -> list[list[int]]:
    """Sorted offsets as [first, last] runs: the held offsets of a partition
    are mostly one contiguous stretch, so the record stays a few bytes long
    however many events wait (it is written to the changelog every batch).
    A slice of sorted distinct offsets is one stretch when its ends are as
    far apart as its length, so the stretches are found by halving from the
    ends, in steps that grow with the number of stretches, not of offsets
    (a backlog holds ~1,000 per input at every batch: 100 µs one by one)."""
    runs: list[list[int]] = []
    if offsets:
        _stretches(offsets, 0, len(offsets), runs)
    return runs


def _stretches(offsets: tuple[int, ...], lo: int, hi: int, runs: list[list[int]]) -> None:
    first, last = offsets[lo], offsets[hi - 1]
    if last - first == hi - 1 - lo:  # offsets[lo:hi] is one stretch
        if runs and runs[-1][1] == first - 1:
            runs[-1][1] = last  # it goes on from the one before
        else:
            runs.append([first, last])
        return
    if hi - lo <= 16:  # scattered: one by one is cheaper than halving further
        for offset in offsets[lo:hi]:
            if runs and runs[-1][1] == offset - 1:
                runs[-1][1] = offset
            else:
                runs.append([offset, offset])
        return
    middle = (lo + hi) // 2
    _stretches(offsets, lo, middle, runs)
    _stretches(offsets, middle, hi, runs)


def _expand(runs: list[list[int]]) -> tuple[int, ...]:
    return tuple(o for first, last in runs for o in range(first, last + 1))


# ------------------------------------------------------------------ redo


@fast_init
@dataclass(frozen=True, slots=True)
class Output:
    """One record to produce: to which output role's topic, its key and value,
    and its partition when it must not follow the key (budget messages go to
    the partition of their bucket or master)."""

    role: str
    key: bytes | None
    value: bytes
    partition: int | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Redo:
    seq: int
    writes: tuple[tuple[bytes, bytes | None], ...]  # (key, value); None deletes
    outputs: tuple[Output, ...]


# Redo records, format 5: format 4's body compressed with zstd (level 1).
# Format 4: binary, length-prefixed (format 2/3, JSON with base64 fields,
# are still read): a batch's redo record holds every write and output of
# the batch, and base64 in JSON cost ~4 µs per event. Uncompressed, the
# redo records were two thirds of the changelog's bytes (the peer log:
# 141 of 208 MB), every byte also written to RocksDB; zstd at level 1
# makes them 5.5x smaller at ~530 MB/s (BENCHMARKS.md "peer").
_REDO_MAGIC = b"\x00R5"
_REDO_MAGIC_4 = b"\x00R4"
_REDO_LEVEL = 1
_REDO_HEAD = struct.Struct(">qII")  # seq, writes, outputs
_WRITE_HEAD = struct.Struct(">Ii")  # key length, value length (-1: delete)
_OUTPUT_HEAD = struct.Struct(">HiIi")  # role length, key length (-1: none), value length,
# partition (-1: by key)


def encode_redo(redo: Redo) -> bytes:
    body = _redo_body(redo)
    return _REDO_MAGIC + bytes(cramjam.zstd.compress(body, _REDO_LEVEL))


def _redo_body(redo: Redo) -> bytes:
    """Format 4's bytes after its magic: the kernel's (`native/src/redo.rs`,
    byte for byte the reference's: 33 against 96 µs for a batch of 250
    writes and 250 outputs, a `struct.pack` and a list item per field in
    Python), or the reference's when it declines."""
    if kernel is not None:
        body: bytes | None = kernel.redo_body(redo.seq, redo.writes, redo.outputs)
        if body is not None:
            return body
    return _redo_body_python(redo)


def _redo_body_python(redo: Redo) -> bytes:
    """The reference body (tests/unit/test_native.py compares the kernel's)."""
    parts = [_REDO_HEAD.pack(redo.seq, len(redo.writes), len(redo.outputs))]
    append = parts.append
    write_head, output_head = _WRITE_HEAD.pack, _OUTPUT_HEAD.pack
    for key, value in redo.writes:
        append(write_head(len(key), -1 if value is None else len(value)))
        append(key)
        if value is not None:
            append(value)
    for o in redo.outputs:
        role = o.role.encode()
        key_len = -1 if o.key is None else len(o.key)
        append(
            output_head(
                len(role), key_len, len(o.value), -1 if o.partition is None else o.partition
            )
        )
        append(role)
        if o.key is not None:
            append(o.key)
        append(o.value)
    return b"".join(parts)


def decode_redo(raw: bytes) -> Redo:
    if raw.startswith(_REDO_MAGIC):
        try:
            body = bytes(cramjam.zstd.decompress(raw[len(_REDO_MAGIC) :]))
        except cramjam.DecompressionError as error:
            raise ValueError(f"redo record of format 5 is cut short or corrupt: {error}") from None
        return _decode_body(body, 5)
    if raw.startswith(_REDO_MAGIC_4):
        return _decode_body(raw[len(_REDO_MAGIC_4) :], 4)
    doc = orjson.loads(raw)
    if not isinstance(doc, list) or not doc or doc[0] not in (2, 3):
        raise ValueError("not a redo record of format 2, 3, 4 or 5")
    _, seq, writes, outputs = doc
    return Redo(
        seq,
        tuple((_unb64(k) or b"", _unb64(v)) for k, v in writes),
        tuple(
            Output(o[0], _unb64(o[1]), _unb64(o[2]) or b"", o[3] if len(o) > 3 else None)
            for o in outputs
        ),
    )


def _decode_body(body: bytes, version: int) -> Redo:
    try:
        return _decode_binary_redo(body, version)
    except struct.error:
        raise ValueError(f"redo record of format {version} is cut short") from None


def _decode_binary_redo(raw: bytes, version: int) -> Redo:
    view = memoryview(raw)
    at = 0
    seq, n_writes, n_outputs = _REDO_HEAD.unpack_from(view, at)
    at += _REDO_HEAD.size
    writes: list[tuple[bytes, bytes | None]] = []
    for _ in range(n_writes):
        key_len, value_len = _WRITE_HEAD.unpack_from(view, at)
        at += _WRITE_HEAD.size
        key = bytes(view[at : at + key_len])
        at += key_len
        value = None
        if value_len >= 0:
            value = bytes(view[at : at + value_len])
            at += value_len
        writes.append((key, value))
    outputs: list[Output] = []
    for _ in range(n_outputs):
        role_len, key_len, value_len, partition = _OUTPUT_HEAD.unpack_from(view, at)
        at += _OUTPUT_HEAD.size
        role = bytes(view[at : at + role_len]).decode()
        at += role_len
        out_key = None
        if key_len >= 0:
            out_key = bytes(view[at : at + key_len])
            at += key_len
        out_value = bytes(view[at : at + value_len])
        at += value_len
        outputs.append(Output(role, out_key, out_value, None if partition < 0 else partition))
    if at > len(raw):
        raise ValueError(f"redo record of format {version} is cut short")
    if at < len(raw):
        raise ValueError(f"redo record of format {version} has {len(raw) - at} trailing byte(s)")
    return Redo(seq, tuple(writes), tuple(outputs))


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def redo_batches(
    read: Callable[[bytes], bytes | None], partition: int
) -> list[tuple[bytes, bytes, Redo]]:
    """The partition's redo records, oldest batch first: (key, bytes, record)."""
    found = []
    for key in redo_keys(partition):
        raw = read(key)
        if raw is not None:
            found.append((key, raw, decode_redo(raw)))
    found.sort(key=lambda item: item[2].seq)
    return found


def last_batch_again(key: bytes, raw_redo: bytes, redo: Redo) -> list[tuple[bytes, bytes | None]]:
    """The writes that put a partition's last batch (its redo record) in the
    changelog again. The local copy is written before the changelog records
    are delivered, so after a failed delivery or a crash (librdkafka's queue
    lost with the process) it can hold a batch the changelog lacks in part,
    even when the stored record already counts it (redo seq == record seq):
    a worker that later took the partition from the changelog would miss
    it. The same values again cost one batch of changelog records per
    assignment; compaction keeps one copy."""
    return [(key, raw_redo), *redo.writes]
