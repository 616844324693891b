"""The benchmark's Python callback: the same as the host's no-op plugin,
for fedora-messaging. It halts with exit code 0 after `halt_after`
messages (from [consumer_config]), printing the time from the first
message to the last as the harness reads it (the ack of the last one
follows the callback's return)."""

import time

from fedora_messaging import config
from fedora_messaging.exceptions import HaltConsumer


class Counter:
    def __init__(self):
        self.halt_after = config.conf["consumer_config"]["halt_after"]
        self.seen = 0
        self.first = None

    def __call__(self, message):
        if self.first is None:
            self.first = time.monotonic()
        self.seen += 1
        if self.seen >= self.halt_after:
            elapsed = time.monotonic() - self.first
            print(f"first delivery to last settle: {elapsed:.6f} s", flush=True)
            raise HaltConsumer(exit_code=0, requeue=False)
