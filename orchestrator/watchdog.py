"""The docker runner's watchdog: removes a run's containers and networks when the orchestrator
dies, even of SIGKILL, which leaves the orchestrator no handler to run. Role processes die with it
by themselves (runner.py starts them with PR_SET_PDEATHSIG); a container's process belongs to the
Docker engine instead, so this small process, started by the orchestrator for each docker run,
waits for the orchestrator's exit and then removes the run's containers by label. At the normal end
of a run the orchestrator removes them itself and ends the watchdog with SIGTERM.

It waits on a pidfd (readable once the process has exited), not on a parent-death signal: that
signal comes when the thread that started the watchdog ends, and a SIGKILLed orchestrator's
threads end one by one, so it can come while the process still exists.

    python -m orchestrator.watchdog RUN_LABEL ORCHESTRATOR_PID"""
import os
import select
import sys


def main(run_label, orchestrator):
    try:
        pidfd = os.pidfd_open(orchestrator)
    except ProcessLookupError:
        pidfd = None  # gone already
    if pidfd is not None and os.getppid() == orchestrator:  # else the pid may be another process's now
        select.select([pidfd], [], [])
    from .containers import client, remove_labelled

    removed = remove_labelled(client(), run_label)
    print(f"watchdog: the orchestrator is gone; removed the {removed} containers and networks of run {run_label}",
          file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
