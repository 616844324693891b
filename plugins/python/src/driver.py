"""The Python side of the fedora-messaging host's Python bridge.

The bridge plugin (plugins/python) starts this script with the interpreter
the configuration names, one process per worker. It imports the callback
once, then runs it for each message the plugin sends, as fedora-messaging
3.9's consumer does: the message is built by `get_message` (schema class
from the `fedora.messages` entry points, then validated), and the
callback's exceptions become outcomes.

Messages arrive on fd 3, one JSON object a line; answers, log records and
publish requests leave on fd 4. Standard output and standard error are the
host's, so what a callback prints goes where fedora-messaging's would.
"""

import asyncio
import copy
import importlib
import inspect
import json
import logging
import os
import queue
import signal
import sys
import threading
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
REQUESTS = os.fdopen(3, "rb")
ANSWERS = os.fdopen(4, "wb")
SEND_LOCK = threading.Lock()


def send(answer):
    line = json.dumps(answer, ensure_ascii=False, default=repr).encode("utf-8") + b"\n"
    with SEND_LOCK:
        ANSWERS.write(line)
        ANSWERS.flush()


class ToHost(logging.Handler):
    """Hands every record to the host's logger, under the logger's name."""

    def emit(self, record):
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            if record.stack_info:
                text += "\n" + record.stack_info
            send({"log": {"level": record.levelno, "name": record.name, "text": text}})
        except Exception:
            self.handleError(record)


logging.root.handlers[:] = [ToHost()]
logging.root.setLevel(SETTINGS["log_level"])
_log = logging.getLogger("fedora_messaging.twisted.consumer")

MESSAGES = queue.Queue()
REPLIES = queue.Queue()
END = object()


def read_requests():
    """Sorts what the plugin sends: messages for the main loop, publish
    answers for whichever thread is publishing."""
    for line in REQUESTS:
        request = json.loads(line)
        if "message" in request:
            MESSAGES.put(request["message"])
        else:
            REPLIES.put(request)
    MESSAGES.put(END)
    REPLIES.put(END)


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
    record = {
        "topic": message.topic,
        "headers": message._headers,
        "id": message.id,
        "body": message.body,
        "priority": message.priority,
    }
    with PUBLISH_LOCK:
        send({"publish": {"record": record, "exchange": exchange, "timeout": timeout}})
        reply = REPLIES.get()
    if reply is END:
        raise exceptions.PublishException(reason="the host stopped")
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


def build_message(request):
    """The message as `get_message` builds it from a delivery."""
    import pika
    from fedora_messaging.message import get_message

    properties = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=2,
        headers=request["headers"],
        message_id=request["id"],
        priority=request["priority"],
    )
    message = get_message(request["topic"], properties, request["body"].encode("utf-8"))
    message.queue = request["queue"] or None
    return message


def handle(callback, loop, request):
    from fedora_messaging import exceptions

    try:
        message = build_message(request)
    except exceptions.ValidationError:
        _log.warning("Message id %s did not pass validation; ignoring message", request["id"])
        return "drop"
    try:
        if inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(
            getattr(callback, "__call__", None)
        ):
            loop.run_until_complete(callback(message))
        else:
            callback(message)
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
        _log.exception("Received unexpected exception from consumer for message id %s", request["id"])
        return {"failed": f"{type(e).__name__}: {e}"}
    finally:
        # Output goes to the host's stdout in order with the messages, as a
        # service's journal expects, not when a buffer fills.
        sys.stdout.flush()
    return "ack"


def main():
    threading.Thread(target=read_requests, name="fm-bridge-reader", daemon=True).start()
    try:
        load_configuration()
        route_publishing_through_host()
        callback = load_callback()
        import fedora_messaging

        version = getattr(fedora_messaging, "__version__", None)
    except BaseException as e:
        _log.error("Cannot start the callback %s", SETTINGS["callback"], exc_info=True)
        send({"start_failed": f"{type(e).__name__}: {e}"})
        return 1
    send(
        {
            "ready": {
                "python": sys.version.split()[0],
                "executable": sys.executable,
                "fedora_messaging": version,
            }
        }
    )
    loop = asyncio.new_event_loop()
    while True:
        request = MESSAGES.get()
        if request is END:
            break
        send({"done": handle(callback, loop, request)})
    sys.stdout.flush()
    return 0


sys.exit(main())
