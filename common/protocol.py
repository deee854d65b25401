"""The whole wire format between the broker, the workers and the status tool.

Every message is one ZeroMQ frame (a DEALER sends ``[payload]``; the broker's ROUTER sees
``[identity, payload]``). The payload is msgpack: ``[VERSION, TYPE, {field: value}]``.
msgpack is used here, in ``encode``/``decode``, and nowhere else. Anything that does not
decode into one of the message classes below raises ``ProtocolError`` with a code:

======================  ==============================================================
code                    meaning
======================  ==============================================================
``too_large``           the frame is over ``MAX_MESSAGE_BYTES``
``bad_msgpack``         the bytes are not msgpack
``bad_envelope``        not a 3-element list ``[version, type, fields]``
``bad_version``         another protocol version
``unknown_type``        no such message type
``bad_fields``          a missing, unknown or wrongly typed field
``unencodable``         (encode) a field value msgpack cannot carry
======================  ==============================================================

Messages (direction, meaning):

==================  ==================  ==============================================
type                direction           meaning
==================  ==================  ==============================================
``HELLO``           worker -> broker    register (or register again after a reconnect)
``WELCOME``         broker -> worker    registered; the broker's timing settings
``HEARTBEAT``       both ways           liveness; the worker's carries its progress
``REQUEST``         worker -> broker    ask for a permit to spend ``cost`` tokens
``GRANT``           broker -> worker    the permit, valid for ``lease_ttl_s``
``REJECT``          broker -> worker    the request will never be granted
``CANCEL``          worker -> broker    the requester stopped waiting for ``seq``
``SETTLE``          worker -> broker    the Keepa call is over; its token envelope
``BYE``             worker -> broker    the worker leaves (SIGTERM, end of work)
``KILL``            broker -> worker    die now (a worker on another host)
``DISCONNECT``      broker -> peer      the broker does not know you: HELLO again
``STATUS``          tool -> broker      ask for the whole live state
``STATUS_REPLY``    broker -> tool      the live state as a dict
``ERROR``           broker -> peer      a bad message was received (and counted)
==================  ==================  ==============================================
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from typing import Any, ClassVar, Union

import msgpack

from common.errors import ProtocolError

# 2: HEARTBEAT.max_cost (broker -> worker) replaces the free-form info["max_cost"];
#    HEARTBEAT.spare (broker -> worker) and HEARTBEAT.storage (worker -> broker) are new.
VERSION = 2
# Largest frame the broker accepts from a peer. A STATUS_REPLY may be larger: decode() of
# replies is called with a larger limit by the status tool.
MAX_MESSAGE_BYTES = 64 * 1024
MAX_REPLY_BYTES = 16 * 1024 * 1024
# HELLO.role of a program on the key that is not a fleet worker: a gateway client (one link
# per client name) or a user's script through the permit API (gateway.client). The broker
# never kills or counts stalled such a peer (it only forgets it when it falls silent) and
# shows its spending apart from the workers'.
ROLE_CLIENT = "client"


class Role(enum.StrEnum):
    """HELLO.role: a fleet worker's pipeline role, or a client program (``ROLE_CLIENT``)."""

    DEALS = "deals"
    INGEST = "ingest"
    REFRESH = "refresh"
    ALL = "all"
    CLIENT = ROLE_CLIENT


WORKER_ROLES = (Role.DEALS, Role.INGEST, Role.REFRESH, Role.ALL)


class SettleStatus(enum.StrEnum):
    """SETTLE.status: how the Keepa call under a permit ended."""

    OK = "ok"  # Keepa answered 2xx
    HTTP_ERROR = "http_error"  # Keepa answered with an error status (envelope attached)
    TIMEOUT = "timeout"  # outcome unknown: the cost is assumed spent
    CONNECTION_ERROR = "connection_error"  # outcome unknown: the cost is assumed spent
    ERROR = "error"  # outcome unknown: the cost is assumed spent
    NOT_SENT = "not_sent"  # the request never left the worker: nothing spent


SETTLE_STATUSES = frozenset(SettleStatus)


class RejectReason(enum.StrEnum):
    """REJECT.reason: why a request will never be granted."""

    DEADLINE = "deadline"  # not grantable before the requester's deadline
    TOO_LARGE = "too_large"  # more than the account can ever grant (see max_cost)
    QUEUE_FULL = "queue_full"  # broker.max_queued_per_worker requests already queued
    DRAINING = "draining"  # the broker is stopping
    CANCELLED = "cancelled"  # (a retried REQUEST of a cancelled seq)
    SEQ_REUSED = "seq_reused"  # the seq was used before for another cost
    KILLED = "killed"  # the broker is killing this worker
    BAD_SEQ = "bad_seq"  # seq outside 0..MAX_SEQ
    BAD_COST = "bad_cost"  # cost outside 1..MAX_COST
    BAD_PRIORITY = "bad_priority"  # priority outside -MAX_PRIORITY..MAX_PRIORITY
    BAD_DEADLINE = "bad_deadline"  # deadline_s not in (0, MAX_DEADLINE_S]
    # While the broker's Keepa state is not ok (broker.keepa_state) nothing is granted until
    # it is; the requester waits a little and asks again.
    KEEPA_NO_ACCESS = "keepa_no_access"  # HTTP 402: the key has no access
    KEEPA_KEY_INVALID = "keepa_key_invalid"  # HTTP 400 on /token: a malformed key
    KEEPA_UNREACHABLE = "keepa_unreachable"  # no answer, connection errors, 5xx


REJECT_KEEPA_NO_ACCESS = RejectReason.KEEPA_NO_ACCESS
REJECT_KEEPA_KEY_INVALID = RejectReason.KEEPA_KEY_INVALID
REJECT_KEEPA_UNREACHABLE = RejectReason.KEEPA_UNREACHABLE
KEEPA_REJECT_REASONS = (REJECT_KEEPA_NO_ACCESS, REJECT_KEEPA_KEY_INVALID, REJECT_KEEPA_UNREACHABLE)


class ErrorCode(enum.StrEnum):
    """ERROR.code (and ``ProtocolError.code``): what was wrong with a received message."""

    TOO_LARGE = "too_large"  # the frame is over MAX_MESSAGE_BYTES
    BAD_MSGPACK = "bad_msgpack"  # the bytes are not msgpack
    BAD_ENVELOPE = "bad_envelope"  # not [version, type, fields]; or a bad token envelope
    BAD_VERSION = "bad_version"  # another protocol version
    UNKNOWN_TYPE = "unknown_type"  # no such message type
    BAD_FIELDS = "bad_fields"  # a missing, unknown or wrongly typed field
    UNENCODABLE = "unencodable"  # (encode) a field value msgpack cannot carry
    BAD_FRAMES = "bad_frames"  # (broker) not [identity, payload] or [identity, "", payload]
    UNEXPECTED_TYPE = "unexpected_type"  # (broker) a message the broker never receives
    BAD_PERMIT = "bad_permit"  # (broker) a SETTLE permit id over MAX_PERMIT_CHARS
    BAD_HELLO = "bad_hello"  # (broker) a HELLO outside the bounds below
    TOO_MANY_WORKERS = "too_many_workers"  # (broker) broker.max_workers registered


# Bounds of the fields the broker accepts (larger frames are dropped by ZeroMQ itself at
# MAX_TRANSPORT_BYTES; a REQUEST outside these is answered REJECT bad_*).
MAX_TRANSPORT_BYTES = 1024 * 1024
MAX_SEQ = 2**63 - 1
MAX_COST = 10**9
MAX_PRIORITY = 10**6
MAX_DEADLINE_S = 7 * 86400.0
MAX_DETAIL_CHARS = 200
# Longest permit id a SETTLE may carry (the broker's are "<8 hex>-<n>"): the ids of settled
# permits are kept for a while, so their size must be bounded too.
MAX_PERMIT_CHARS = 64


@dataclasses.dataclass(frozen=True)
class Message:
    """Base of all messages; subclasses set TYPE and declare their fields."""

    TYPE: ClassVar[str] = ""

    def encode(self) -> bytes:
        return encode(self)


# --- worker -> broker -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Hello(Message):
    TYPE: ClassVar[str] = "HELLO"
    worker_id: str
    pid: int
    host: str
    # Process start time as reported by common.procinfo.process_start_time(pid): clock ticks
    # since boot on Linux. Compared only on the same host, before any signal is sent.
    start_time: int
    role: str
    version: str


@dataclasses.dataclass(frozen=True)
class Heartbeat(Message):
    TYPE: ClassVar[str] = "HEARTBEAT"
    # Advanced only by the worker's work loop; frozen progress while not waiting = stalled.
    progress: int = 0
    # True while the work loop waits on the broker (a REQUEST is outstanding).
    waiting: bool = False
    stage: str = ""
    items_done: int = 0
    # Free-form figures the worker wants shown in status (pipeline totals, feed staleness).
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The worker's storage health (workers.storage_gate): empty while writes succeed, else
    # {"problem": common.storage_health name, "since_s": seconds, "held": results kept in
    # memory, "detail": the error}. Sent by workers only.
    storage: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Broker -> worker: the largest cost the account can ever grant (as in WELCOME); 0 =
    # not known (and always 0 from a worker).
    max_cost: int = 0
    # Broker -> worker: tokens the next refill would lose to the cap while nothing waits for
    # tokens (use it or lose it: a worker may spend them on work not due yet); 0 from a worker.
    spare: int = 0


@dataclasses.dataclass(frozen=True)
class Request(Message):
    TYPE: ClassVar[str] = "REQUEST"
    # Per-worker sequence number; a retried (worker, seq) gets the same answer.
    seq: int
    cost: int
    priority: int = 0
    # How long the requester will wait for a grant, in seconds from when it sent this.
    deadline_s: float = 60.0


@dataclasses.dataclass(frozen=True)
class Cancel(Message):
    TYPE: ClassVar[str] = "CANCEL"
    seq: int


@dataclasses.dataclass(frozen=True)
class Settle(Message):
    TYPE: ClassVar[str] = "SETTLE"
    permit: str
    status: str  # a SettleStatus
    envelope: dict[str, Any] | None = None
    http_status: int | None = None


@dataclasses.dataclass(frozen=True)
class Bye(Message):
    TYPE: ClassVar[str] = "BYE"
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class Status(Message):
    TYPE: ClassVar[str] = "STATUS"


# --- broker -> peer ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Welcome(Message):
    TYPE: ClassVar[str] = "WELCOME"
    broker_id: str
    heartbeat_s: float
    liveness: int
    lease_ttl_s: float
    # The largest cost the account can ever grant (cap + max_deficit); 0 = not known yet.
    max_cost: int = 0


@dataclasses.dataclass(frozen=True)
class Grant(Message):
    TYPE: ClassVar[str] = "GRANT"
    seq: int
    permit: str
    cost: int
    lease_ttl_s: float


@dataclasses.dataclass(frozen=True)
class Reject(Message):
    TYPE: ClassVar[str] = "REJECT"
    seq: int
    reason: str  # a RejectReason ("too_large": see max_cost)
    max_cost: int = 0


@dataclasses.dataclass(frozen=True)
class Kill(Message):
    TYPE: ClassVar[str] = "KILL"
    reason: str  # a kill reason: "silent" or "stalled" (broker/states.py)


@dataclasses.dataclass(frozen=True)
class Disconnect(Message):
    TYPE: ClassVar[str] = "DISCONNECT"
    reason: str


@dataclasses.dataclass(frozen=True)
class StatusReply(Message):
    TYPE: ClassVar[str] = "STATUS_REPLY"
    state: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Error(Message):
    TYPE: ClassVar[str] = "ERROR"
    code: str  # an ErrorCode
    detail: str = ""


def request_problem(msg: Request) -> RejectReason | None:
    """Why a REQUEST is outside the bounds above (None: it is inside)."""
    if not 0 <= msg.seq <= MAX_SEQ:
        return RejectReason.BAD_SEQ
    if not 1 <= msg.cost <= MAX_COST:
        return RejectReason.BAD_COST
    if not -MAX_PRIORITY <= msg.priority <= MAX_PRIORITY:
        return RejectReason.BAD_PRIORITY
    if not (math.isfinite(msg.deadline_s) and 0 < msg.deadline_s <= MAX_DEADLINE_S):
        return RejectReason.BAD_DEADLINE
    return None


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Heartbeat,
        Request,
        Cancel,
        Settle,
        Bye,
        Status,
        Welcome,
        Grant,
        Reject,
        Kill,
        Disconnect,
        StatusReply,
        Error,
    )
}


# --- encode / decode --------------------------------------------------------------------


def encode(message: Message) -> bytes:
    """Serialize a message into one frame."""
    fields = {name: getattr(message, name) for name in _schema(type(message))}
    try:
        return msgpack.packb([VERSION, message.TYPE, fields], use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(ErrorCode.UNENCODABLE, f"{message.TYPE}: {exc}") from None


def decode(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Parse one frame into a message; anything else raises ProtocolError (never another)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(ErrorCode.BAD_ENVELOPE, f"frame is {type(data).__name__}, not bytes")
    if len(data) > max_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"{len(data)} bytes > {max_bytes}")
    try:
        obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(ErrorCode.BAD_MSGPACK, f"{type(exc).__name__}: {exc}") from None
    if not isinstance(obj, list) or len(obj) != 3:
        raise ProtocolError(ErrorCode.BAD_ENVELOPE, "expected [version, type, fields]")
    version, type_, fields = obj
    if version != VERSION or isinstance(version, bool):
        raise ProtocolError(
            ErrorCode.BAD_VERSION, f"version {version!r}, this side speaks {VERSION}"
        )
    if not isinstance(type_, str) or type_ not in MESSAGE_TYPES:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"type {type_!r}"[:200])
    if not isinstance(fields, dict):
        raise ProtocolError(ErrorCode.BAD_FIELDS, f"{type_}: fields are not a map")
    cls = MESSAGE_TYPES[type_]
    schema = _schema(cls)
    unknown = set(fields) - set(schema)
    if unknown:
        raise ProtocolError(
            ErrorCode.BAD_FIELDS, f"{type_}: unknown fields {sorted(map(str, unknown))}"
        )
    kwargs: dict[str, Any] = {}
    for name, (expected, required) in schema.items():
        if name not in fields:
            if required:
                raise ProtocolError(ErrorCode.BAD_FIELDS, f"{type_}: missing field {name!r}")
            continue
        value = fields[name]
        if not _matches(value, expected):
            raise ProtocolError(
                ErrorCode.BAD_FIELDS, f"{type_}.{name}: {type(value).__name__} is not {expected}"
            )
        kwargs[name] = float(value) if expected == (float,) else value
    return cls(**kwargs)


# Which Python types a field accepts, and whether it is required, per message class.
_SCHEMAS: dict[type[Message], dict[str, tuple[tuple[type, ...], bool]]] = {}


def _schema(cls: type[Message]) -> dict[str, tuple[tuple[type, ...], bool]]:
    schema = _SCHEMAS.get(cls)
    if schema is None:
        hints = typing.get_type_hints(cls)
        schema = {}
        for f in dataclasses.fields(cls):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            schema[f.name] = (_accepted_types(hints[f.name]), required)
        _SCHEMAS[cls] = schema
    return schema


def _accepted_types(hint: Any) -> tuple[type, ...]:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        out: tuple[type, ...] = ()
        for arg in typing.get_args(hint):
            out += _accepted_types(arg)
        return out
    if hint is type(None):
        return (type(None),)
    if origin is not None:
        return (origin,)
    if hint is float:
        return (float,)
    return (hint,)


def _matches(value: Any, accepted: tuple[type, ...]) -> bool:
    if type(value) in accepted:  # the common case, exactly (bool only where bool is)
        return True
    if isinstance(value, bool):
        return bool in accepted
    if isinstance(value, int) and float in accepted:
        return True
    return isinstance(value, accepted)
