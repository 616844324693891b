"""The Python side of the fedora-messaging host's Python bridge.

The bridge plugin (plugins/python) starts this script with the interpreter
the configuration names, one process per worker. It imports the callback
once, then runs it for each message the plugin sends, as fedora-messaging
3.9's consumer does: the message is built by `get_message` (schema class
from the `fedora.messages` entry points, then validated), and the
callback's exceptions become outcomes.

The conversation is in frames (plugins/python/src/frames.rs): a length
(u32, little-endian), a kind (one byte), the payload. Messages and publish
replies arrive on fd 3; the main thread's answers, log records and publish
requests leave on fd 4, which the plugin reads while it waits for the main
thread; every other thread's log records and publish requests leave on
fd 5, which the plugin reads at any time. The plugin sends the next
message while this one is handled, so the next is waiting when it is done;
fd 6, when the host gives it, becomes readable once the host drains, and a
message is not begun then (nor after the callback halted or failed): its
answer is "unstarted". Standard output and standard
error are the host's, so what a callback prints goes where
fedora-messaging's would.

No one but this driver writes to these descriptors: they are moved to
close-on-exec ones at once (nothing a callback runs inherits them), and a
child forked from Python (os.fork, multiprocessing) closes them and logs to
standard error instead.
"""

import asyncio
import collections
import copy
import importlib
import inspect
import json
import logging
import os
import select
import signal
import struct
import sys
import threading
import time
import traceback
import types

# The host owns signals: SIGTERM or SIGINT make it finish the message in
# hand and then close our input, which is when this process ends. Here they
# do nothing, through a handler rather than SIG_IGN: a handler is reset by
# exec, so what a callback runs (subprocess, os.system) can still be
# stopped, where an ignored signal would stay ignored in it. (The host
# kills this process if the host itself dies.)
def _host_owns_signals(signum, frame):
    pass


signal.signal(signal.SIGINT, _host_owns_signals)
signal.signal(signal.SIGTERM, _host_owns_signals)

SETTINGS = json.loads(sys.argv[1])

HEADER = struct.Struct("<IB")
MESSAGE, REPLY = ord("M"), ord("R")
READY, START_FAILED, DONE, LOG, PUBLISH = (ord(k) for k in "YFDLP")
END = object()
# Set in a child forked from this process: it must not speak for it.
FORKED = False


def _own(fd):
    """The inherited descriptor `fd` as one of our own, close-on-exec
    (Python's descriptors are), the inherited number closed."""
    own = os.dup(fd)
    os.close(fd)
    return own


REQUESTS_FD, SYNC_FD, ASYNC_FD = _own(3), _own(4), _own(5)
# The host's draining descriptor, readable once it drains: a message it
# sent ahead of its answer to the one before is then not begun.
DRAINING_FD = _own(6) if SETTINGS.get("draining_fd") else None


class Outbox:
    """One descriptor's frames, each written whole under a lock."""

    def __init__(self, fd):
        self.fd = fd
        self.lock = threading.Lock()

    def send(self, kind, payload):
        self.send_frame(HEADER.pack(len(payload), kind) + payload)

    def send_frame(self, frame):
        with self.lock:
            written = os.write(self.fd, frame)
            if written < len(frame):
                view = memoryview(frame)[written:]
                while view:
                    view = view[os.write(self.fd, view):]


SYNC, ASYNC = Outbox(SYNC_FD), Outbox(ASYNC_FD)
MAIN_THREAD = threading.main_thread()


def send(kind, value):
    """Sends `value` as JSON: from the main thread on the descriptor the
    plugin reads while it waits for it, from any other on the other."""
    if FORKED:
        raise RuntimeError("a process forked from the callback's cannot talk to the host")
    payload = json.dumps(value, ensure_ascii=False, default=repr).encode("utf-8", "replace")
    (SYNC if threading.current_thread() is MAIN_THREAD else ASYNC).send(kind, payload)


class Inbox:
    """What the plugin sends on fd 3, read by whichever thread needs it
    next (the main thread a message, a publishing thread its reply), so
    no thread sits between the pipe and the one waiting."""

    def __init__(self, fd):
        self.fd = fd
        self.buffer = bytearray()
        self.waiting = {MESSAGE: collections.deque(), REPLY: collections.deque()}
        self.condition = threading.Condition()
        self.reading = False
        self.closed = False

    def take(self, kind):
        """The next frame of `kind`, or END once the plugin closed fd 3."""
        while True:
            with self.condition:
                while True:
                    if self.waiting[kind]:
                        return self.waiting[kind].popleft()
                    if self.closed:
                        return END
                    if not self.reading:
                        break
                    self.condition.wait()
                self.reading = True
            frame = None
            try:
                frame = self._read()
            finally:
                with self.condition:
                    self.reading = False
                    if frame is None:
                        self.closed = True
                    elif frame[0] != kind:
                        self.waiting[frame[0]].append(frame[1])
                    self.condition.notify_all()
            # What this thread waits for goes to it at once.
            if frame is not None and frame[0] == kind:
                return frame[1]

    def _read(self):
        size = HEADER.size
        if not self._fill(size):
            return None
        length, kind = HEADER.unpack_from(self.buffer)
        if kind not in self.waiting:
            raise SystemExit(f"the host sent a frame of unknown kind {kind}")
        end = size + length
        if not self._fill(end):
            raise SystemExit("the host's input closed in the middle of a frame")
        payload = bytes(self.buffer[size:end])
        del self.buffer[:end]
        return kind, payload

    def _fill(self, size):
        """Whether the buffer holds `size` bytes, reading what it lacks
        (and whatever else has come); False once the input closed."""
        while len(self.buffer) < size:
            chunk = os.read(self.fd, max(65536, size - len(self.buffer)))
            if not chunk:
                return False
            self.buffer += chunk
        return True


INBOX = Inbox(REQUESTS_FD)


def _in_a_forked_child():
    """A child forked from this process (os.fork, multiprocessing) keeps
    none of the conversation: its descriptors close, and what it logs goes
    to standard error, so nothing it writes can be taken for an answer."""
    global FORKED
    FORKED = True
    for fd in (REQUESTS_FD, SYNC_FD, ASYNC_FD, DRAINING_FD):
        if fd is None:
            continue
        try:
            os.close(fd)
        except OSError:
            pass


os.register_at_fork(after_in_child=_in_a_forked_child)


class ToHost(logging.Handler):
    """Hands every record to the host's logger, under the logger's name;
    in a forked child, writes it to standard error."""

    def __init__(self):
        super().__init__()
        # The host's own format, so the journal reads the same.
        self.forked_format = logging.Formatter("[%(name)s %(levelname)s] %(message)s")

    def emit(self, record):
        # Several handlers of log_config may see the same record: the
        # host is given it once.
        if getattr(record, "_fm_sent_to_host", False):
            return
        record._fm_sent_to_host = True
        try:
            if FORKED:
                sys.stderr.write(self.forked_format.format(record) + "\n")
                sys.stderr.flush()
                return
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            if record.stack_info:
                text += "\n" + record.stack_info
            send(LOG, {"level": record.levelno, "name": record.name, "text": text})
        except Exception:
            self.handleError(record)


# Until log_config is applied (apply_log_config), at the host's level.
logging.root.handlers[:] = [ToHost()]
logging.root.setLevel(SETTINGS["log_level"])
_log = logging.getLogger("fedora_messaging.twisted.consumer")


def load_configuration():
    """`fedora_messaging.config.conf` from the host's file, without the keys
    only this host knows, which fedora-messaging would refuse."""
    from fedora_messaging import config

    path = SETTINGS.get("conf")
    values = copy.deepcopy(config.DEFAULTS)
    if path:
        os.environ["FEDORA_MESSAGING_CONF"] = path
        with open(path, "rb") as fd:
            for key, value in config.tomllib.load(fd).items():
                if key.lower() not in SETTINGS["host_keys"]:
                    values[key.lower()] = value
    config.conf.loaded = True
    dict.update(config.conf, values)
    config.conf._validate()


def apply_log_config():
    """`log_config` as fedora-messaging's CLI applies it
    (`logging.config.dictConfig`: levels, propagation, filters,
    `disable_existing_loggers`), its handlers all writing to the host,
    which shows each record once in its own line format."""
    import logging.config

    from fedora_messaging import config

    log_config = copy.deepcopy(config.conf["log_config"])
    handlers = log_config.get("handlers") or {}
    for name, handler in handlers.items():
        to_host = {"()": ToHost}
        for kept in ("level", "filters", "formatter"):
            if kept in handler:
                to_host[kept] = handler[kept]
        handlers[name] = to_host
    try:
        logging.config.dictConfig(log_config)
    except (ValueError, TypeError, AttributeError, ImportError) as e:
        raise ValueError(
            f"log_config is not one Python's logging.config.dictConfig takes ({e}), "
            "and fedora-messaging's CLI refuses it too: fix log_config (it needs version = 1)"
        ) from e
    # A configuration without a handler for the root logger would leave
    # Python's last resort writing to standard error; the host is the
    # destination.
    if not logging.root.handlers:
        logging.root.addHandler(ToHost())


def load_callback():
    """The callable, as fedora-messaging's CLI finds it: `--callback-file`'s
    `file.py:name` is run, `package.module:name` is imported; a class is
    instantiated once."""
    spec = SETTINGS["callback"]
    if SETTINGS["kind"] == "file":
        path, name = spec.rsplit(":", 1)
        namespace = {"__file__": path, "__name__": "__fedora_messaging_callback__"}
        with open(path) as fd:
            exec(compile(fd.read(), path, "exec"), namespace)  # noqa: S102
        callback = namespace[name]
    else:
        module, name = spec.strip().split(":")
        callback = getattr(importlib.import_module(module), name)
    if inspect.isclass(callback):
        callback = callback()
    if not callable(callback):
        raise ValueError("Callback must be a class that implements __call__ or a function.")
    return callback


def publish_through_host(message, exchange=None, timeout=30):
    """`fedora_messaging.api.publish`, through the host's connection: the
    message is validated here, then the host publishes it and waits for the
    broker's confirm. fedora-messaging's publish signals are sent as its
    own `publish` sends them."""
    from fedora_messaging import api

    api.pre_publish_signal.send(api.publish, message=message)
    try:
        _publish_through_host(message, exchange, timeout)
    except Exception as e:
        api.publish_failed_signal.send(api.publish, message=message, reason=e)
        raise
    api.publish_signal.send(api.publish, message=message)


def twisted_publish_through_host(message, exchange=None):
    """`fedora_messaging.api.twisted_publish`, through the host: a Deferred
    that has fired once the broker confirmed the message (no Twisted
    service, with its own connection, is started)."""
    from twisted.internet import defer

    return defer.maybeDeferred(publish_through_host, message, exchange)


def route_publishing_through_host():
    """Every publishing entry point of `fedora_messaging.api` goes through
    the host, replaced before the callback is imported: a name it binds at
    import (`from fedora_messaging.api import publish`) is the host's too.
    The originals would open a connection of their own (to the default
    broker under `amqp_urls`), go uncounted, and start fedora-messaging's
    Twisted service, whose `[monitoring]` takes the host's port."""
    from fedora_messaging import api, message

    api.publish = publish_through_host
    api.twisted_publish = twisted_publish_through_host
    message.jsonschema = SchemasCheckedOnce(message.jsonschema)


def _publish_through_host(message, exchange, timeout):
    from fedora_messaging import exceptions
    import jsonschema

    try:
        message.validate()
    except (jsonschema.exceptions.ValidationError, AttributeError) as e:
        raise exceptions.ValidationError(e) from e
    if FORKED:
        raise exceptions.PublishException(
            reason="publishing from a process forked from the callback's is not supported"
        )
    record = {
        "topic": message.topic,
        "headers": message._headers,
        "id": message.id,
        # The bytes fedora-messaging's Message encodes, sent as they are.
        "encoded_body": _encoded_body(message).decode("utf-8"),
        "priority": message.priority,
    }
    with PUBLISH_LOCK:
        send(PUBLISH, {"record": record, "exchange": exchange, "timeout": timeout})
        reply = INBOX.take(REPLY)
    if reply is END:
        raise exceptions.PublishException(reason="the host stopped")
    reply = json.loads(reply)
    if "published" in reply:
        return None
    failure = reply["publish_failed"]
    kind, reason = failure["kind"], failure["reason"]
    if kind == "Timeout" or kind == "Unreachable":
        raise exceptions.PublishTimeout(reason=reason)
    if kind == "Forbidden":
        raise exceptions.PublishForbidden(reason=reason)
    if kind == "Returned":
        raise exceptions.PublishReturned(reason=reason)
    if kind == "Invalid":
        raise exceptions.ValidationError(reason)
    raise exceptions.PublishException(reason=reason)


PUBLISH_LOCK = threading.Lock()


def _encoded_body(message):
    """The body's bytes as fedora-messaging puts them on the wire."""
    encoded = getattr(message, "_encoded_body", None)
    if isinstance(encoded, bytes):
        return encoded
    return json.dumps(message.body).encode("utf-8")


class SchemasCheckedOnce(types.ModuleType):
    """`jsonschema` as `fedora_messaging.message` sees it, with `validate`
    checking each schema against its meta-schema once, not per message.

    `jsonschema.validate` checks the schema itself on every call, which is
    most of what fedora-messaging spends per message. Messages are
    validated exactly as before: same validator class, same schema, same
    best-match error. A schema is a class attribute that never changes; one
    changed in place after its first use would not be checked again.
    """

    def __init__(self, real):
        super().__init__(real.__name__)
        self._real = real
        self._validators = {}

    def __getattr__(self, name):
        return getattr(self._real, name)

    def validate(self, instance, schema, cls=None, *args, **kwargs):
        if cls is not None or args or kwargs:
            return self._real.validate(instance, schema, cls, *args, **kwargs)
        # Keyed by identity, and holding the schema so the id stays its.
        known = self._validators.get(id(schema))
        if known is None or known[0] is not schema:
            validator_class = self._real.validators.validator_for(schema)
            validator_class.check_schema(schema)
            known = (schema, validator_class(schema))
            self._validators[id(schema)] = known
        error = self._real.exceptions.best_match(known[1].iter_errors(instance))
        if error is not None:
            raise error


def build_message(request, get_message, properties_class):
    """The message as `get_message` builds it from a delivery."""
    properties = properties_class(
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=2,
        headers=request["headers"],
        message_id=request["id"],
        priority=request["priority"],
    )
    message = get_message(request["topic"], properties, request["body"])
    message.queue = request["queue"] or None
    return message


def handler(callback, loop):
    """What runs for each message: builds it, runs the callback, and says
    what became of it as fedora-messaging's consumer does. What can be
    decided once (the imports, whether the callback is a coroutine) is."""
    import pika
    from fedora_messaging import exceptions
    from fedora_messaging.message import get_message

    if inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(
        getattr(callback, "__call__", None)
    ):

        def run(message):
            loop.run_until_complete(callback(message))

    else:
        run = callback
    properties_class = pika.BasicProperties
    flush = sys.stdout.flush

    def handle(request):
        try:
            message = build_message(request, get_message, properties_class)
        except exceptions.ValidationError:
            _log.warning("Message id %s did not pass validation; ignoring message", request["id"])
            return "drop"
        try:
            run(message)
        except exceptions.Nack:
            return "nack"
        except exceptions.Drop:
            return "drop"
        except exceptions.HaltConsumer as e:
            return {
                "halt": {
                    "exit_code": e.exit_code,
                    "requeue": bool(e.requeue),
                    "reason": str(e.reason) if e.reason is not None else None,
                }
            }
        except Exception as e:
            _log.exception(
                "Received unexpected exception from consumer for message id %s", request["id"]
            )
            return {"failed": f"{type(e).__name__}: {e}"}
        finally:
            # Output goes to the host's stdout in order with the messages,
            # as a service's journal expects, not when a buffer fills.
            flush()
        return "ack"

    return handle


# The answers that are a word, framed once.
WORDS = {
    word: HEADER.pack(len(encoded), DONE) + encoded
    for word, encoded in (
        (word, json.dumps(word).encode()) for word in ("ack", "nack", "drop", "unstarted")
    )
}


def answer(outcome):
    """Sends a message's outcome (from the main thread)."""
    if isinstance(outcome, str):
        SYNC.send_frame(WORDS[outcome])
    else:
        send(DONE, outcome)


def schema_packages():
    """The installed packages that give fedora-messaging schemas (the
    `fedora.messages` entry points), with their versions."""
    from importlib import metadata

    try:
        points = metadata.entry_points(group="fedora.messages")
    except TypeError:  # Python before 3.10
        points = metadata.entry_points().get("fedora.messages", [])
    found = set()
    for point in points:
        dist = getattr(point, "dist", None)
        if dist is not None:
            found.add(f"{dist.metadata['Name']} {dist.version}")
    return sorted(found)


def decode_message(payload):
    """A message frame: its length-prefixed JSON description, then the
    body's bytes as they came from the broker."""
    (described,) = struct.unpack_from("<I", payload)
    request = json.loads(payload[4 : 4 + described])
    request["body"] = payload[4 + described :]
    return request


def main():
    try:
        load_configuration()
        apply_log_config()
        route_publishing_through_host()
        callback = load_callback()
        handle = handler(callback, asyncio.new_event_loop())
        import fedora_messaging

        version = getattr(fedora_messaging, "__version__", None)
    except BaseException as e:
        _log.error("Cannot start the callback %s", SETTINGS["callback"], exc_info=True)
        send(START_FAILED, f"{type(e).__name__}: {e}")
        return 1
    send(
        READY,
        {
            "python": sys.version.split()[0],
            "executable": sys.executable,
            "fedora_messaging": version,
            "schema_packages": schema_packages(),
        },
    )
    timing = os.environ.pop("FM_PYTHON_BRIDGE_TIMING", None)
    clock = time.perf_counter
    handled, in_python, waiting = 0, 0.0, 0.0
    draining = None
    if DRAINING_FD is not None:
        draining = select.poll()
        draining.register(DRAINING_FD, select.POLLIN)
    # Set once the callback halted or failed: the host consumes nothing
    # after that, and messages it sent ahead are not begun.
    ended = False
    while True:
        asked = clock()
        payload = INBOX.take(MESSAGE)
        if payload is END:
            break
        if handled:
            # From the first message on: before it, Python waited for the
            # host to start consuming, which is no hand-off.
            waiting += clock() - asked
        if ended or (draining is not None and draining.poll(0)):
            answer("unstarted")
            continue
        request = decode_message(payload)
        started = clock()
        outcome = handle(request)
        in_python += clock() - started
        handled += 1
        ended = not isinstance(outcome, str)
        answer(outcome)
    sys.stdout.flush()
    if timing:
        # For the benchmark (bench/, `fm-bench bridge`): the time spent in
        # Python, which the bridge's own overhead is measured against.
        print(
            f"fm-python-bridge timing: {handled} message(s) in {in_python:.6f} s;"
            f" waiting for the host {waiting:.6f} s",
            file=sys.stderr,
        )
    return 0


sys.exit(main())
