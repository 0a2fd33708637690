"""The process runner: timeouts, whole-process-group cleanup, Ctrl-C, unsupported cells."""
import os
import select
import sys
import threading
from pathlib import Path

import yaml

from orchestrator import runner
from orchestrator.matrix import evaluate
from orchestrator.registry import load_registry
from orchestrator.spec import load_spec

FIXTURE = Path(__file__).parent / "fixtures" / "stuck_role.py"


def gone(pid, within=10):
    """True once process `pid` has terminated (a zombie counts): SIGKILL takes effect a moment
    after it is sent, so wait for it on a pidfd, which turns readable when the process exits."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], within)[0])
    finally:
        os.close(fd)


def setup(tmp_path, timeout):
    languages = {
        "stuck": {"launch": [sys.executable, str(FIXTURE)], "implements": {"chat": ["server", "client"]}},
        "mute": {"launch": ["/bin/true"], "implements": {"chat": ["client"]}},
    }
    (tmp_path / "languages.yaml").write_text(yaml.safe_dump(languages))
    spec = {
        "example": "chat",
        "roles": {
            "server": {"wait_for": "ready", "stop": "signal", "flags": {"requests": "tcp://127.0.0.1:*"}},
            "client": {"instances": 2, "each": [{"name": "a"}, {"name": "b"}], "flags": {"name": "{name}", "count": 1}},
        },
        "matrix": ["server", "client"],
        "timeouts": {"cell": timeout},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_spec(tmp_path / "spec.yaml"), load_registry(tmp_path / "languages.yaml")


def test_a_timeout_kills_every_process_group(tmp_path):
    spec, registry = setup(tmp_path, timeout=1.5)
    seen = []
    result = evaluate(spec, {"server": "stuck", "client": "stuck"}, registry, tmp_path / "run",
                      on_event=lambda t, e: seen.append(e.get("pid")))
    assert result.status == "timeout"
    assert "still running: server 0 (stuck), client 0 (stuck), client 1 (stuck)" in result.detail
    children = [pid for pid in seen if pid]
    assert len(children) == 3  # one child per role process
    for pid in children + [t.pid for t in result.transcripts]:
        assert gone(pid), f"process {pid} outlived its cell"
    # Every role's stdout and stderr were saved.
    for t in result.transcripts:
        assert t.events_path.exists() and t.stderr_path.exists()


def test_ctrl_c_kills_everything_at_once(tmp_path):
    spec, registry = setup(tmp_path, timeout=300)
    children, started = [], threading.Event()

    def on_event(transcript, event):
        children.append(event["pid"])
        if len(children) == 3:
            started.set()

    outcome = {}
    cell = threading.Thread(target=lambda: outcome.setdefault("result", evaluate(
        spec, {"server": "stuck", "client": "stuck"}, registry, tmp_path / "run", on_event)))
    cell.start()
    try:
        assert started.wait(60), "the stuck roles never reported ready"
        runner.kill_everything()
        cell.join(60)
        assert not cell.is_alive(), "the cell did not end after kill_everything()"
    finally:
        runner.aborting.clear()
    assert outcome["result"].status != "pass"
    for pid in children + [t.pid for t in outcome["result"].transcripts]:
        assert gone(pid), f"process {pid} outlived its cell"


def test_a_role_a_language_lacks_is_unsupported_not_failed(tmp_path):
    spec, registry = setup(tmp_path, timeout=5)
    result = evaluate(spec, {"server": "mute", "client": "stuck"}, registry, tmp_path / "run")
    assert result.status == "unsupported"
    assert result.detail == "mute does not implement chat server"
    assert result.transcripts == []


def test_a_server_that_exits_before_ready_fails_the_cell_quickly(tmp_path):
    spec, registry = setup(tmp_path, timeout=60)
    registry.languages["mute"].implements["chat"].add("server")
    result = evaluate(spec, {"server": "mute", "client": "stuck"}, registry, tmp_path / "run")
    assert result.status == "fail"
    assert "server 0 (mute): exited before its ready event" in result.problems
    assert result.seconds < 30
    assert [t.role for t in result.transcripts] == ["server"]  # no client was started


def test_a_driver_that_fails_ends_the_cell_at_once_with_its_problem(tmp_path):
    """The stuck clients would wait for the cell's timeout; the driver's failure kills them."""
    spec, registry = setup(tmp_path, timeout=60)
    seen = {}

    def driver(ready, cell_dir, deadline):
        seen.update(ready=ready, cell_dir=cell_dir)
        return ["the page never loaded"]

    result = evaluate(spec, {"server": "stuck", "client": "stuck"}, registry, tmp_path / "run", driver=driver)
    assert result.status == "fail" and "the page never loaded" in result.problems
    assert result.seconds < 30
    assert set(seen["ready"]) == {"server"} and seen["cell_dir"].parent == tmp_path / "run"

