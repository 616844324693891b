"""The benchmark's Python callback: the same as the host's no-op plugin,
for fedora-messaging. It halts with exit code 0 after `halt_after`
messages (from [consumer_config]), printing the time from the first
message to the last as the harness reads it (the ack of the last one
follows the callback's return).

With `count_file` in [consumer_config] (the bridge with several workers,
one Python process each), the messages are counted across processes: each
appends a byte to that file, and the one that sees it reach `halt_after`
halts the host."""

import os
import time

from fedora_messaging import config
from fedora_messaging.exceptions import HaltConsumer


class Counter:
    def __init__(self):
        consumer_config = config.conf["consumer_config"]
        self.halt_after = consumer_config["halt_after"]
        self.seen = 0
        self.first = None
        count_file = consumer_config.get("count_file")
        self.shared = None
        if count_file:
            self.shared = os.open(count_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def __call__(self, message):
        if self.first is None:
            self.first = time.monotonic()
        if self.shared is None:
            self.seen += 1
        else:
            os.write(self.shared, b".")
            self.seen = os.fstat(self.shared).st_size
        if self.seen >= self.halt_after:
            elapsed = time.monotonic() - self.first
            print(f"first delivery to last settle: {elapsed:.6f} s", flush=True)
            raise HaltConsumer(exit_code=0, requeue=False)
