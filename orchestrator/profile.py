"""invoke profile: where a throughput pair's time goes, as CPU time per message on each side.

Both roles of a thr pair run as in `invoke bench`, but started here rather than by the runner,
so that each is reaped with wait4(2), whose resource usage counts every thread of the process
(the application's and the library's I/O threads), user and system time together. The same pair
with one message gives each side's start-up and shutdown, which is taken off. When the two sides
together need C µs of CPU per message, a machine of N cores cannot move more than N / C messages a
second: a pair whose measured rate is close to that bound is CPU-bound, and the side with the
larger share is the one to look at."""
import json
import os
import signal
import statistics
import subprocess
import tempfile
import threading
from dataclasses import dataclass

STARTUP_RUNS = 2  # runs of one message, whose cheapest CPU time is a side's fixed cost


@dataclass
class Sample:
    msg_per_s: float
    sink_cpu: float  # seconds, user + system, every thread
    source_cpu: float


@dataclass
class Profile:
    source: str
    sink: str
    size: int
    count: int
    msg_per_s: float  # the median of the runs
    source_us: float  # CPU µs per message, start-up taken off
    sink_us: float

    @property
    def bound(self):
        """Messages a second that the machine's cores allow at this CPU cost per message."""
        return (os.cpu_count() or 1) / ((self.source_us + self.sink_us) / 1e6)


class ProfileError(Exception):
    pass


def _reap(process, deadline_s):
    """Wait for `process` and return its CPU seconds; kill its group if it outlives `deadline_s`."""
    timer = threading.Timer(deadline_s, lambda: _kill(process))
    timer.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return usage.ru_utime + usage.ru_stime


def _kill(process):
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _events(output, lang):
    """The JSON Lines a role printed (the launch contract), or a ProfileError naming the bad line."""
    events = []
    for line in output.splitlines():
        try:
            event = json.loads(line) if line.strip() else None
        except ValueError:
            event = None
        if line.strip() and not isinstance(event, dict):
            raise ProfileError(f"{lang} thr-sink printed a line that is not a JSON event: {line[:200]!r}")
        if event is not None:
            events.append(event)
    return events


def run_pair(registry, source, sink, size, count, timeout_ms=60000):
    """One thr-sink ← thr-source run on loopback: a Sample."""
    flags = {"endpoint": "tcp://127.0.0.1:*", "size": size, "count": count, "timeout": timeout_ms}
    receiver, log = registry[sink], tempfile.TemporaryFile()
    started = subprocess.Popen(receiver.command("perf", "thr-sink", flags), stdout=subprocess.PIPE, stderr=log,
                               stdin=subprocess.DEVNULL, env=receiver.environment(), start_new_session=True)
    try:
        [ready] = _events(started.stdout.readline(), sink) or [{}]
        if ready.get("event") != "ready":
            log.seek(0)
            raise ProfileError(f"{sink} thr-sink did not report ready: {log.read(2000).decode(errors='replace')}")
        sender = registry[source]
        sending = subprocess.Popen(sender.command("perf", "thr-source", {**flags, "endpoint": ready["endpoint"]}),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                   env=sender.environment(), start_new_session=True)
        source_cpu = _reap(sending, timeout_ms / 1000 + 5)
        events = _events(started.stdout.read(), sink)
        sink_cpu = _reap(started, 5)
    finally:
        log.close()
        if started.returncode is None:
            _kill(started)
            started.wait()
    result = next((e for e in events if e.get("event") == "result"), None)
    if result is None or started.returncode != 0 or sending.returncode != 0:
        errors = [e for e in events if e.get("event") == "error"]
        raise ProfileError(f"{source} → {sink}: the pair failed (exit {sending.returncode} and {started.returncode}; {errors[:1]})")
    return Sample(result["msg_per_s"], sink_cpu, source_cpu)


def profile(registry, source, sink, size, count, repeat=3):
    """CPU per message of each side, start-up and shutdown taken off: a Profile."""
    fixed = [run_pair(registry, source, sink, size, 1) for _ in range(STARTUP_RUNS)]
    fixed_sink, fixed_source = min(s.sink_cpu for s in fixed), min(s.source_cpu for s in fixed)
    runs = [run_pair(registry, source, sink, size, count) for _ in range(repeat)]
    return Profile(source, sink, size, count, statistics.median(s.msg_per_s for s in runs),
                   statistics.median((s.source_cpu - fixed_source) / count * 1e6 for s in runs),
                   statistics.median((s.sink_cpu - fixed_sink) / count * 1e6 for s in runs))
