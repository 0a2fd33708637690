"""The launch contract's reporting half: JSON Lines events on stdout, logs on stderr."""
import json
import sys
import time


def emit(event, **fields):
    """Write one event as one JSON line and flush it at once, so the orchestrator sees it live."""
    print(json.dumps({"event": event, **fields}, ensure_ascii=False), flush=True)


def log(message):
    print(message, file=sys.stderr, flush=True)


class Failure(Exception):
    """A fatal error: reported as an `error` event, then the role exits 1."""

    def __init__(self, code, reason):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Deadline:
    """The role's --timeout: milliseconds left, or None when there is no limit (0)."""

    def __init__(self, timeout_ms):
        self.end = time.monotonic() + timeout_ms / 1000 if timeout_ms > 0 else None

    def remaining_ms(self):
        if self.end is None:
            return None
        return max(0, int((self.end - time.monotonic()) * 1000))

    def expired(self):
        return self.end is not None and time.monotonic() >= self.end

    def cap(self, ms):
        """A poll timeout of at most `ms` that never runs past the deadline."""
        left = self.remaining_ms()
        return ms if left is None else min(ms, left)
