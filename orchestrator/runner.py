"""The runner: starts every role of one cell under the launch contract, waits for readiness by
events, enforces the cell's timeout, and never leaves a process behind. Where a role runs is the
launcher's business: a local process group (LocalLauncher, here) or a container
(orchestrator/containers.py); the cell's logic, transcripts and checks are the same."""
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import checks
from .spec import render
from .transport import WILDCARD, IpcFolder, bound_names, endpoints

STOP_GRACE = 10  # seconds a role that serves until SIGTERM gets to report done and exit
DIE_WITH_US = shutil.which("setpriv") is not None  # util-linux, in every Debian

_live = set()  # every running role not yet reaped, so that Ctrl-C can kill them all
_live_lock = threading.Lock()
aborting = threading.Event()


class Interrupted(KeyboardInterrupt):
    """A signal that ends the run (SIGINT, SIGTERM, SIGHUP): raised in the main thread, it ends a
    run as Ctrl-C always did. `partial`: what a grid had finished by then (matrix.run_matrix)."""

    def __init__(self, number):
        super().__init__(number)
        self.number, self.partial = number, None

    @property
    def name(self):
        return signal.Signals(self.number).name

    @property
    def exit_code(self):
        return 128 + self.number


def stop_on_signals():
    """SIGINT, SIGTERM (a CI system cancelling a job) and SIGHUP (a closed terminal) all raise
    Interrupted in the main thread; a second signal while the first is being handled is ignored."""

    def handler(number, frame):
        if not aborting.is_set():
            raise Interrupted(number)

    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, handler)


def kill_everything():
    """Kill every role this orchestrator started (Ctrl-C, or another signal that ends the run)."""
    aborting.set()
    with _live_lock:
        for process in list(_live):
            process.kill()


def _kill_group(pid, number=signal.SIGKILL):
    try:
        os.killpg(pid, number)
    except ProcessLookupError:
        pass  # the whole group is gone already


@dataclass
class RoleTranscript:
    role: str
    index: int
    lang: str
    flags: dict
    argv: list
    events: list = field(default_factory=list)
    exit_code: int = None  # None: never started, or killed because the cell ran out of time
    pid: int = None
    started_at: float = None  # wall clock (time.time()), for checks on timestamps
    ended_at: float = None
    killed: str = None  # why the orchestrator killed it on purpose (a fault it injected)
    killed_at: float = None  # when (time.time(), as started_at: a tick's timestamp is compared with it)
    restarted: bool = False  # the same role instance, started again after its first run was killed
    events_path: Path = None
    stderr_path: Path = None
    where: str = None  # the container, for roles that run in one
    node: str = None  # the swarm node that ran it (--runner swarm)
    handle: object = field(default=None, repr=False, compare=False)  # the running Role

    @property
    def label(self):
        return f"{self.role} {self.index} ({self.lang})" + (", restarted" if self.restarted else "")

    def last_error(self):
        for event in reversed(self.events):
            if event.get("event") == "error":
                return f"{event.get('code')}: {event.get('reason')}"
        return None


class Role:
    """One running role instance: a thread turns its stdout into events as they come."""

    def __init__(self, transcript, on_event):
        self.t = transcript
        self.on_event = on_event
        self.changed = threading.Condition()
        self.eof = False
        transcript.handle = self
        transcript.started_at = time.time()

    def _start_reading(self, lines):
        with _live_lock:
            _live.add(self)
        self.reader = threading.Thread(target=self._read, args=(lines,), daemon=True)
        self.reader.start()

    def _read(self, lines):
        with open(self.t.events_path, "wb") as saved:
            for raw in lines:
                saved.write(raw)
                saved.flush()
                try:
                    event = json.loads(raw)
                    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
                        raise ValueError
                except ValueError:
                    event = {"event": "_not-an-event", "line": raw.decode("utf-8", "replace").rstrip("\n")}
                with self.changed:
                    self.t.events.append(event)
                    self.changed.notify_all()
                if self.on_event:
                    self.on_event(self.t, event)
        with self.changed:
            self.eof = True
            self.changed.notify_all()

    def wait_event(self, name, deadline):
        """The first event called `name` of the role itself; None if stdout closed or the deadline
        passed first. An event with an `agent` field is one of the role's threads' (the desk's
        agents report `ready` too), not the role's."""
        return self.wait_for(lambda event: event["event"] == name and "agent" not in event, deadline)

    def wait_for(self, wanted, deadline, count=1):
        """The `count`-th event for which `wanted(event)` holds, or None (stdout closed, deadline)."""
        with self.changed:
            while True:
                found = [event for event in self.t.events if wanted(event)]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if self.eof or left <= 0 or aborting.is_set():
                    return None
                self.changed.wait(left)

    def _forget(self):
        with _live_lock:
            _live.discard(self)


class RoleProcess(Role):
    """A role as a local process, the leader of its own process group."""

    def __init__(self, transcript, env, on_event):
        super().__init__(transcript, on_event)
        transcript.stderr_path.parent.mkdir(parents=True, exist_ok=True)
        with open(transcript.stderr_path, "wb") as stderr:
            # A new session makes the role the leader of its own process group: killing the group
            # takes any child it started with it.
            self.process = subprocess.Popen(
                # setpriv --pdeathsig: the role is killed when the orchestrator thread that started
                # it dies, even by SIGKILL, when nothing else could clean up.
                ["setpriv", "--pdeathsig", "KILL", "--", *transcript.argv] if DIE_WITH_US else transcript.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                start_new_session=True,
            )
        transcript.pid = self.process.pid
        self._start_reading(self.process.stdout)

    def wait_exit(self, deadline):
        try:
            self.t.exit_code = self.process.wait(timeout=max(0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        self.reader.join()  # the pipe closes with the process group: every event is in
        return True

    def terminate(self):
        self._signal(signal.SIGTERM)

    def kill(self):
        self._signal(signal.SIGKILL)

    def _signal(self, number):
        _kill_group(self.process.pid, number)

    def reap(self):
        """Kill the group whatever state it is in, and wait for the leader."""
        exited = self.process.poll()  # not None: it had exited by itself before we came
        self.kill()
        self.process.wait()
        self.t.ended_at = time.time()
        if self.t.exit_code is None and exited is not None:
            self.t.exit_code = exited
        self.reader.join(timeout=STOP_GRACE)
        self._forget()


class LocalLauncher:
    """Roles as local processes: the default runner."""

    name = "process"

    def command(self, language, example, role, flags):
        return language.command(example, role, flags)

    def adapt(self, flags):
        return flags

    def start(self, transcript, language, on_event):
        try:
            return RoleProcess(transcript, language.environment(), on_event)
        except OSError as error:
            raise CannotStart(f"{transcript.label}: cannot start {transcript.argv[0]}: {error.strerror} (run `invoke build`)") from error

    def published(self, role, index, event):
        return event

    def share(self, folder, path):
        pass  # a local process sees the cell's ipc folder where it is

    def close(self):
        pass


class CannotStart(Exception):
    """A role could not even be started; the message says why and what to do."""


@dataclass(frozen=True)
class Fault:
    """Kill instance 0 of `role` with SIGKILL as soon as instance 0 of `by` (the role itself
    unless given) has reported `count` `event`s; with `every`, as soon as every instance of `by`
    has. With `restart`, start it again at once, with the same flags and on the endpoints its
    first run bound (a role that serves until SIGTERM)."""

    role: str
    event: str
    count: int
    by: str = None
    restart: bool = False
    every: bool = False

    @property
    def watched(self):
        return self.by or self.role

    def describe(self):
        whose = "its" if self.watched == self.role else f"every {self.watched}'s" if self.every else f"{self.watched} 0's"
        return f"killed with SIGKILL after {whose} {self.count}th {self.event} event" + (", then started again" if self.restart else "")


@dataclass
class CellResult:
    example: str
    roles: dict  # role -> list of languages, one per instance
    status: str  # pass, fail, timeout, unsupported, known-failure
    seconds: float
    detail: str
    transcripts: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    known_failure_passed: str = None
    extra: bool = False  # a cell outside the grid's combinations (a mixed pool)
    runner: str = "process"  # where its roles ran: process, docker or swarm
    placement: dict = None  # swarm: role -> the node of each instance, as they ran

    def nodes_text(self):
        """`server 0 (rust) on manager, client 0 (vb) on btb-worker-1`: where each role ran."""
        return ", ".join(f"{t.label} on {t.node}" for t in self.transcripts if t.node)


def cell_id(roles):
    return "__".join(f"{role}-{'+'.join(dict.fromkeys(langs))}" for role, langs in roles.items())


def run_cell(spec, roles, registry, run_dir, on_event=None, fault=None, launcher=None, driver=None):
    """Run one cell: `roles` maps each role of the spec to one language per instance. `driver`:
    something outside the roles that takes part once every role has started (a browser on the
    desk's page, orchestrator/browser.py): called as driver(ready events by role, the cell's
    folder, deadline) in a thread of its own, it returns its problems; the roles that serve until
    SIGTERM are stopped only once it has returned."""
    launcher = launcher or LocalLauncher()
    fault = fault or spec.fault
    if spec.secure:  # fresh keys and passwords for every cell
        spec = replace(spec, secure=spec.secure.for_cell(roles, registry))
    started = time.monotonic()
    seen = []  # the fault's events so far: the index of the instance that reported each
    struck = []  # the fault's target, once it struck
    striking = threading.Lock()  # with `every`, several instances' readers report the fault's events
    restarting = []  # the thread that restarts the fault's role, once it strikes
    settled, over = threading.Event(), threading.Event()  # the restart is done (or failed); the cell is

    def watch(transcript, event):
        if (fault and transcript.role == fault.watched and (fault.every or transcript.index == 0)
                and not transcript.restarted and event["event"] == fault.event):
            with striking:
                seen.append(transcript.index)
                watched = range(len(roles[fault.watched])) if fault.every else [0]
                targets = [p for r, p in processes if r.name == fault.role and p.t.index == 0 and not p.t.restarted]
                if struck or not targets or not all(seen.count(i) >= fault.count for i in watched):
                    targets = []
                else:
                    struck.append(targets[0])
            if targets:
                target = targets[0]
                target.t.killed, target.t.killed_at = fault.describe(), time.time()
                target.kill()
                if fault.restart:
                    restarting.append(threading.Thread(target=restart, args=(target,), name="restart", daemon=True))
                    restarting[0].start()
        if on_event:
            on_event(transcript, event)

    def restart(old):
        """Start the killed role again, on the endpoints its first run reported bound, once it is
        gone (its port or socket file free again), and wait for its ready. The thread then stays
        until the cell is over: a local role dies with the thread that started it (setpriv
        --pdeathsig follows the thread, not the process)."""
        try:
            start_again(old)
        finally:
            settled.set()
            over.wait()

    def start_again(old):
        old.wait_exit(deadline)
        role = next(r for r in spec.roles if r.name == old.t.role)
        first = next((e for e in old.t.events if e["event"] == "ready" and "agent" not in e), {})
        flags = {name: first.get(name, value) if isinstance(role.flags.get(name), str) and role.flags[name] == WILDCARD else value
                 for name, value in old.t.flags.items()}
        language = registry[old.t.lang]
        stem = f"{role.name}{old.t.index}-{old.t.lang}-restarted"
        transcript = RoleTranscript(
            role.name, old.t.index, old.t.lang, flags,
            launcher.command(language, role.program_example(spec.example), role.program_role, flags),
            events_path=cell_dir / f"{stem}.jsonl", stderr_path=cell_dir / f"{stem}.stderr", restarted=True,
        )
        try:
            process = launcher.start(transcript, language, watch)
        except CannotStart as error:
            problems.append(str(error))
            return
        processes.append((role, process))  # the main thread stops the signal roles only once `settled` is set
        if role.wait_for and process.wait_event(role.wait_for, deadline) is None:
            problems.append(f"{transcript.label}: no {role.wait_for} event after the restart")

    deadline = started + spec.cell_timeout
    cell_dir = Path(run_dir) / cell_id(roles)
    processes, ready, problems = [], {}, []
    timed_out = False
    ipc = IpcFolder(cell_dir, bound_names(spec, roles, registry)) if spec.transport == "ipc" else None
    if ipc:
        launcher.share(ipc.folder, ipc.link)  # containers see the sockets at the same path
    try:
        for role in spec.roles:
            mine = []
            for index, lang in enumerate(roles[role.name]):
                context = spec.context(role, index, ready, lang)
                flags = endpoints(spec, role.name, index, {name: render(value, context) for name, value in role.flags.items()}, ipc)
                flags = launcher.adapt(flags)
                flags.setdefault("timeout", int(spec.cell_timeout * 1000))
                if spec.monitor:
                    flags["monitor"] = "on"
                if spec.secure:
                    flags.update(spec.secure.flags(role.name, index))
                language = registry[lang]
                stem = f"{role.name}{index}-{lang}"
                transcript = RoleTranscript(
                    role.name, index, lang, flags,
                    launcher.command(language, role.program_example(spec.example), role.program_role, flags),
                    events_path=cell_dir / f"{stem}.jsonl", stderr_path=cell_dir / f"{stem}.stderr",
                )
                if aborting.is_set():
                    raise _Stop("interrupted")
                if role.start_after:  # a late joiner: wait for another role's progress first
                    _wait_to_start(role, index, context, processes, deadline)
                try:
                    process = launcher.start(transcript, language, watch)
                except CannotStart as error:
                    problems.append(str(error))
                    raise _Stop() from error
                processes.append((role, process))
                mine.append(process)
            for process in mine if role.wait_for else ():
                event = process.wait_event(role.wait_for, deadline)
                if event is None:
                    if time.monotonic() >= deadline:
                        timed_out = True
                        problems.append(f"{process.t.label}: no {role.wait_for} event within {spec.cell_timeout} s")
                    else:
                        problems.append(f"{process.t.label}: exited before its {role.wait_for} event")
                    raise _Stop()
            if role.wait_for:
                ready[role.name] = launcher.published(role.name, 0, mine[0].wait_event(role.wait_for, deadline))

        driving = Driving(driver, ready, cell_dir, deadline, [p for r, p in processes if r.stop == "exit"]) if driver else None
        # Roles that finish by themselves first; then the ones that serve until told to stop.
        for role, process in processes:
            if role.stop == "exit" and not process.wait_exit(deadline):
                timed_out = True
        if fault and fault.restart and restarting:
            settled.wait(max(0, deadline - time.monotonic()))  # the restarted role is in `processes` now
        if driving and not driving.wait(deadline):
            timed_out = True
            problems.append(f"the driver ({driving.name}) was still at work at the cell's timeout")
        problems += driving.problems if driving else []
        if fault and not struck:
            problems.append(f"the fault never struck: {fault.watched} reported {len(seen)} {fault.event} events "
                            f"({'every instance' if fault.every else 'instance 0'} was to report {fault.count})")
        if not timed_out:
            for role, process in processes:
                if role.stop == "signal":
                    process.terminate()
            for role, process in processes:
                if role.stop == "signal" and not process.wait_exit(min(deadline, time.monotonic() + STOP_GRACE)):
                    problems.append(f"{process.t.label}: still running {STOP_GRACE} s after SIGTERM")
    except _Stop as stop:
        if stop.args:
            problems.append(stop.args[0])
    finally:
        settled.wait(STOP_GRACE if restarting else 0)  # a restart under way: its role is reaped too
        for _, process in processes:
            process.reap()
        over.set()
        for thread in restarting:
            thread.join(STOP_GRACE)
        launcher.close()
        if ipc:
            ipc.close()
    if timed_out:
        running = [p.t.label for _, p in processes if p.t.exit_code is None]
        problems.insert(0, f"timeout after {spec.cell_timeout} s; still running: {', '.join(running)}")

    transcripts = [process.t for _, process in processes]
    problems += checks.check(spec, transcripts)
    status = "timeout" if timed_out else ("fail" if problems else "pass")
    if aborting.is_set() and status != "pass":  # cut short by a signal: not the roles' failure
        status, problems = "interrupted", ["interrupted: every role was killed when the run was stopped"] + problems
    detail = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
    return CellResult(
        spec.example, roles, status, round(time.monotonic() - started, 2),
        detail or "; ".join(checks.notes(spec, transcripts)), transcripts, problems,
    )


def _wait_to_start(role, index, context, processes, deadline):
    after = role.start_after
    count = int(render(str(after["count"]), context))
    leader = next(process for spec_role, process in processes if spec_role.name == after["role"])
    if count > 0 and leader.wait_for(lambda event: event["event"] == after["event"], deadline, count) is None:
        raise _Stop(f"{role.name} {index} was to start after {count} {after['event']} events of {leader.t.label}, "
                    f"which reported {sum(1 for e in leader.t.events if e['event'] == after['event'])}")


class Driving:
    """A cell's driver at work in its own thread. A driver that fails kills the roles that would
    otherwise wait for it (a chat client waiting for the page's post) so that the cell ends now."""

    def __init__(self, driver, ready, cell_dir, deadline, waiting):
        self.name = getattr(driver, "__name__", "driver")
        self.problems, self.done = [], threading.Event()

        def run():
            try:
                self.problems = list(driver(dict(ready), cell_dir, deadline))
            except Exception as error:  # its problem, as a sentence, not the orchestrator's crash
                self.problems = [f"the driver ({self.name}) failed: {type(error).__name__}: {error}"]
            if self.problems:
                for process in waiting:
                    process.kill()
            self.done.set()

        threading.Thread(target=run, name=f"driver-{self.name}", daemon=True).start()

    def wait(self, deadline):
        return self.done.wait(max(0, deadline - time.monotonic()))


class _Stop(Exception):
    """Stop starting roles: the cell cannot go on (a role died early, or Ctrl-C)."""
