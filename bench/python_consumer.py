"""The benchmark's Python callback: the same as the host's no-op plugin,
for fedora-messaging. It halts with exit code 0 after `halt_after`
messages (from [consumer_config])."""

from fedora_messaging import config
from fedora_messaging.exceptions import HaltConsumer


class Counter:
    def __init__(self):
        self.halt_after = config.conf["consumer_config"]["halt_after"]
        self.seen = 0

    def __call__(self, message):
        self.seen += 1
        if self.seen >= self.halt_after:
            raise HaltConsumer(exit_code=0, requeue=False)
