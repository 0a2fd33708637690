"""The container runner: a cell of every example in containers, the chat grid, and nothing left
behind after a pass, a timeout or Ctrl-C. Needs a Docker engine (`invoke docker.up`) and a base
image (`invoke docker.base` offline); CI provides both, elsewhere these tests skip without them."""
import dataclasses
import os
import subprocess
import sys
import time

import pytest

from conftest import LANGS, interrupted
from orchestrator import ROOT, containers
from orchestrator.matrix import evaluate, new_run_dir, run_matrix
from orchestrator.runner import Fault
from orchestrator.spec import load_spec

pytestmark = pytest.mark.docker


def unavailable(why):
    if os.environ.get("CI"):
        pytest.fail(f"CI starts a Docker engine and builds the base image first: {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def images(built):
    try:
        engine = containers.client()
        containers.base_image(engine)
        return engine, {lang: containers.ensure_image(engine, built[lang], log=lambda _: None)[0] for lang in LANGS}
    except containers.DockerUnavailable as error:
        unavailable(str(error))


@pytest.fixture
def launcher(images):
    """Each cell's launcher; the fixture sweeps its run's label afterwards, just in case."""
    engine, tags = images
    label = containers.new_run_label()
    yield containers.DockerLaunchers(tags, label)
    containers.remove_labelled(engine, label)


CELLS = [
    ("chat", {"server": "rust", "client": ["vb", "python", "c"]}),
    ("ticker", {"publisher": "c", "proxy": "csharp", "subscriber": ["python", "fsharp"]}),
    ("valuation", {"source": "rust", "worker": ["vb", "c"], "sink": "python"}),
    ("query", {"engine": "csharp", "facade": ["python", "c", "fsharp"]}),  # the ticker publisher in C# too
    # the desk's further cell: every service in another language, two more traders
    ("desk", load_spec("desk").further[0]),
]


@pytest.mark.parametrize("example, chosen", CELLS, ids=[example for example, _ in CELLS])
def test_a_cell_of_every_example_passes_in_containers(built, images, launcher, example, chosen):
    result = evaluate(load_spec(example), chosen, built.registry, new_run_dir(example), launcher=launcher)
    assert result.status == "pass", result.problems
    assert all(t.where and t.where.startswith("btb-") for t in result.transcripts)
    assert containers.leftovers(images[0]) == []


@pytest.mark.parametrize("mechanism, refusal, chosen", [
    ("curve", "unknown-client-key", {"server": "rust", "client": ["vb", "python", "c"]}),
    ("plain", "wrong-password", {"server": "c", "client": ["python", "rust", "c"]}),
])
def test_security_and_refusals_work_across_container_networks(built, images, launcher, mechanism, refusal, chosen):
    spec = load_spec("chat").with_security(mechanism, refusal)
    result = evaluate(spec, chosen, built.registry, new_run_dir("chat"), launcher=launcher)
    assert result.status == "pass", result.problems
    [server] = [t for t in result.transcripts if t.role == "server"]
    assert [e for e in server.events if e["event"] == "denied"]  # the intruder, turned away by ZAP


@pytest.mark.parametrize("example, chosen", [
    ("chat", {"server": "c", "client": ["python", "rust", "c"]}),
    ("valuation", {"source": "python", "worker": ["c", "rust"], "sink": "rust"}),
])
def test_unix_sockets_reach_across_containers_through_the_cell_s_folder(built, images, launcher, example, chosen):
    """Over ipc, every container of the cell mounts the cell's ipc folder at the same short path:
    libzmq's Unix sockets reach from one container to another, and their files are in the run folder."""
    spec = load_spec(example).with_transport("ipc", monitor=True)
    run_dir = new_run_dir(example)
    result = evaluate(spec, chosen, built.registry, run_dir, launcher=launcher)
    assert result.status == "pass", result.problems
    ready = [e for t in result.transcripts for e in t.events if e["event"] == "ready" and t.index == 0]
    assert any(str(value).startswith("ipc:///tmp/btb-") for event in ready for value in event.values())
    assert list(run_dir.glob("*/ipc/*")), "the sockets' files are in the cell's folder"
    assert containers.leftovers(images[0]) == []


def test_a_netmq_cell_over_ipc_is_unsupported_in_containers(built, images, launcher):
    result = evaluate(load_spec("chat").with_transport("ipc"), {"server": "csharp", "client": "vb"}, built.registry,
                      new_run_dir("chat"), launcher=launcher)
    assert result.status == "unsupported" and "loopback of its own" in result.detail


def test_a_worker_container_killed_mid_batch_loses_nothing(built, images, launcher):
    spec = load_spec("valuation")
    spec = spec.with_parameters(rate=spec.parameters["fault_rate"])
    result = evaluate(spec, {"source": "python", "worker": ["fsharp", "rust"], "sink": "csharp"}, built.registry,
                      new_run_dir("valuation"), fault=Fault("worker", "priced", 20), launcher=launcher)
    assert result.status == "pass", result.problems
    [complete] = [e for t in result.transcripts if t.role == "sink" for e in t.events if e["event"] == "complete"]
    assert complete["resent"]


def test_nothing_outlives_a_timeout_or_ctrl_c(built, images, launcher):
    engine = images[0]
    hurried = dataclasses.replace(load_spec("chat"), cell_timeout=1.5)  # too short for containers
    result = evaluate(hurried, {"server": "csharp", "client": "fsharp"}, built.registry, new_run_dir("chat"), launcher=launcher)
    assert result.status in ("timeout", "fail"), result.status
    assert containers.leftovers(engine) == []

    result = interrupted(lambda on_event: evaluate(load_spec("chat"), {"server": "python", "client": "python"}, built.registry,
                                                   new_run_dir("chat"), on_event=on_event, launcher=launcher))
    assert result.status != "pass"
    assert containers.leftovers(engine) == []


@pytest.mark.grid
def test_the_chat_grid_passes_in_containers(built, images, launcher):
    results, _, run_dir = run_matrix(load_spec("chat"), {"server": LANGS, "client": LANGS}, built.registry,
                                     parallel=3, launcher=launcher)
    failures = [f"{r.roles}: {r.status}: {r.detail}" for r in results if r.status != "pass"]
    assert len(results) == len(LANGS) ** 2 and not failures, f"logs in {run_dir}:\n" + "\n".join(failures)
    assert containers.leftovers(images[0]) == []


def desk_grid_until(prefix):
    """`invoke matrix desk` on the docker runner (two cells, one at a time), read up to the first
    line that starts with `prefix`."""
    grid = subprocess.Popen([sys.executable, "-m", "invoke", "matrix", "desk", "--runner", "docker", "--desk", "c,python",
                             "--server", "c", "--parallel", "1", "--no-build"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    line = grid.stdout.readline()
    while line and not line.startswith(prefix):
        line = grid.stdout.readline()
    assert line.startswith(prefix), line
    return grid


def test_sigterm_to_a_docker_grid_removes_every_container_and_network(images):
    """What a CI system does when it cancels a job: the run's containers and network go, the cells
    cut short are interrupted, and the exit is 143 with one line saying so."""
    grid = desk_grid_until("[1/2] ")
    grid.terminate()
    rest = grid.stdout.read()
    assert grid.wait(120) == 143, rest[-1500:]
    assert rest.strip().splitlines()[-1].startswith("interrupted by SIGTERM: "), rest[-500:]
    assert containers.leftovers(images[0]) == []


def test_sigkill_to_a_docker_run_still_removes_every_container_and_network(images):
    """SIGKILL leaves the orchestrator no handler: its watchdog (orchestrator/watchdog.py) sees it
    exit and removes the run's containers and network."""
    grid = desk_grid_until("images ready")
    deadline = time.monotonic() + 60
    while len(containers.leftovers(images[0])) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)  # polling the engine: the cell's containers show only there
    assert len(containers.leftovers(images[0])) >= 3, "the first cell's containers never came"
    grid.kill()
    rest = grid.stdout.read()  # to the end: the watchdog holds the pipe (its stderr) until it is done
    assert grid.wait() == -9
    assert "watchdog: the orchestrator is gone; removed the " in rest, rest[-1000:]
    assert containers.leftovers(images[0]) == []
