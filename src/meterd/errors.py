"""meterd's one exception tree.

Errors are grouped by where in the life of the daemon they happen::

    MeterdError
     +-- ConfigError                  startup only: every problem of a config file, listed together
     |    +-- TaskSpecError           (also ValueError) a poll task that cannot be scheduled  [config.tasks]
     +-- LinkError                    the byte pipe to a bus or terminal failed
     |    +-- LinkTimeoutError        (also TimeoutError) nothing, or not enough, came back in time
     |    +-- LinkClosedError         (also ConnectionError) the peer closed / device went away
     +-- ProtocolError                bytes that are not a well-formed frame or payload
     |    +-- ChecksumError           CS byte does not match the frame
     |    +-- FrameLengthError        L field or payload length is inconsistent
     |    +-- UnknownIdentifierError  a data identifier that is not in the catalogue
     |    +-- AddressMismatchError    a well-formed reply came from another meter (address, Modbus unit)
     |    +-- PayloadError            (also ValueError) an MQTT message off the payload schema  [MQTT codec]
     +-- TransactionError             one request to one meter failed after its retries; ``kind`` says
     |                                how (timeout, link, garbled, wrong_address ...)  [collector.channel]
     +-- ReadFailed                   one identifier of one meter could not be read  [collector.poll]
     +-- DeviceRejectedError          a meter answered with an abnormal reply (carries its error bits)
     |    +-- ModbusRefused           a Modbus exception response  [collector.modbus]
     +-- ReadRefusedError             an on-demand read asked for a meter or quantity this node cannot read
     +-- ControlError                 a control action was not confirmed by read-back
     +-- AmountError                  (also ValueError) an amount outside the grammar or the limits  [control.amounts]
     +-- LedgerError                  (also ValueError) a payment, adjustment, command or account the
     |                                prepaid state database refuses; the message says why
     +-- SyncError                    billing-system exchange failed
     |    +-- BadFileError            a whole file or response is unusable  [billing_link.records]
     |    +-- HttpSyncError           the billing system's HTTP endpoint failed  [billing_link.http]
     |    +-- RecordError             (also ValueError) one record refused and quarantined  [billing_link.records]
     |    +-- SyncBusy                a run of the job is already going  [billing_link.runtime]
     +-- StorageError                 a store (time series, spool, state database) cannot be used
     |    +-- StorageFullError        a database or spool cannot be written: disk full (nothing half-written)
     |    +-- SpoolLockedError        (also RuntimeError) another process has the spool open  [storage.spool]
     |    +-- LeaseError              the cluster's lease table cannot be used, or refused this node  [cluster.leases]
     +-- ApiError                     an HTTP request refused with a status and a message  [api.app]
     +-- BadInput                     (also ValueError) a probe argument that is not an address,
                                      port or identifier  [cli.probe]
     +-- CommandError                 (also ValueError) a simulator control command that cannot be
                                      carried out; its text goes back to the sender  [simulators.control]

Classes defined outside this module name their module in brackets; ``tests/unit/test_errors.py``
checks that every exception class of meterd is under MeterdError and that each class drawn here
has the parent drawn.

Third-party exceptions (pyserial, asyncio, construct, ...) are translated once, at the edge,
with ``raise ... from exc``.  The protocol codecs raise only ProtocolError subclasses; a meter's
refusal is *returned* by the codec as a value, and only becomes a DeviceRejectedError where a caller
insists on a normal answer.
"""

from __future__ import annotations


class MeterdError(Exception):
    """Base of every error meterd raises on purpose."""


class ConfigError(MeterdError):
    """One or more problems in a configuration file.

    ``problems`` holds every problem found, each already naming file and key, so the operator
    sees all of them in one run instead of fixing them one at a time.
    """

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} configuration error(s):\n{lines}")


class LinkError(MeterdError):
    """The transport to a bus or terminal failed."""

    def __init__(self, message: str, *, channel: str | None = None) -> None:
        self.channel = channel
        super().__init__(f"{channel}: {message}" if channel else message)


class LinkTimeoutError(LinkError, TimeoutError):
    """No complete answer before the deadline."""

    def __init__(self, message: str, *, channel: str | None = None, received: bytes = b"") -> None:
        self.received = received
        super().__init__(message, channel=channel)


class LinkClosedError(LinkError, ConnectionError):
    """The peer closed the link or the device disappeared."""


class ProtocolError(MeterdError):
    """Malformed bytes.  ``data`` holds the offending bytes where known."""

    def __init__(self, message: str, data: bytes | None = None) -> None:
        self.data = data
        if data is not None:
            message = f"{message} [{data.hex(' ').upper()}]"
        super().__init__(message)


class ChecksumError(ProtocolError):
    """The frame checksum is wrong."""


class FrameLengthError(ProtocolError):
    """The frame is truncated or its length field is inconsistent."""


class UnknownIdentifierError(ProtocolError):
    """The data identifier is not in meterd's catalogue."""

    def __init__(self, message: str, di: int | None = None, data: bytes | None = None) -> None:
        self.di = di
        super().__init__(message, data)


class AddressMismatchError(ProtocolError):
    """A complete, valid reply came from a meter other than the one asked (another address, or
    another Modbus unit id).  ``expected`` and ``got`` name the two (``"000001000002"``,
    ``"unit 3"``); the channel records the attempt as ``wrong_address``."""

    def __init__(self, expected: str, got: str, data: bytes | None = None) -> None:
        self.expected = expected
        self.got = got
        super().__init__(f"reply came from {got}, not {expected}", data)


class DeviceRejectedError(MeterdError):
    """A meter sent an abnormal reply.  ``error`` is the decoded error value of the protocol."""

    def __init__(self, meter: str, error: object) -> None:
        self.meter = meter
        self.error = error
        super().__init__(f"meter {meter} refused: {error}")


class ControlError(MeterdError):
    """A control command was not confirmed by reading the relay state back."""


class ReadRefusedError(MeterdError):
    """An on-demand read cannot be made as asked: the meter is on no channel of this node, or it
    has no way to read a quantity asked for.  Nothing was sent."""


class LedgerError(MeterdError, ValueError):
    """A payment, adjustment, account change or command transition the prepaid state database
    refuses; the message says why.  Nothing was written."""


class SyncError(MeterdError):
    """An exchange with the billing system failed."""


class StorageError(MeterdError):
    """A store (the time-series store, the spool, the state database) cannot be used."""


class StorageFullError(StorageError):
    """A write was refused for want of space: the disk (or the database's size limit) is full.

    The transaction it was part of was rolled back whole.  ``what`` names the store for people
    ("the state database"), ``path`` the file."""

    def __init__(self, what: str, path: object) -> None:
        self.what, self.path = what, path
        super().__init__(f"{what} cannot be written: disk full ({path})")
