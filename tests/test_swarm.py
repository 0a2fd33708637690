"""The swarm runner (orchestrator/swarm.py) on a throw-away local swarm that these tests make and
take down (orchestrator/localswarm.py): a cell of every example on one node, a task the node
rejects, Ctrl-C and SIGTERM leaving nothing behind, and a cell over two nodes (a Docker-in-Docker
worker) whose roles ran on different nodes. A swarm these tests did not make is never changed:
they use it when it has the shape they need, and skip otherwise. Placement rules and the
cells a swarm cannot run are checked without an engine first."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import docker
import pytest
import requests

from orchestrator import ROOT, containers, localswarm
from orchestrator.matrix import evaluate, new_run_dir, replay_of
from orchestrator.runner import Fault
from orchestrator.spec import load_spec
from orchestrator.swarm import Node, Placement, Swarm, SwarmLaunchers
from conftest import REGISTRY, interrupted


# --- placement and what a swarm cannot run: no engine needed --------------------------------------


class Nodes:
    """A stand-in for a Swarm: just its usable nodes, for Placement."""

    def __init__(self, *nodes):
        self.usable = list(nodes)

    find = Swarm.find


A, B, C = Node("ida", "alpha", engine=object()), Node("idb", "beta"), Node("idc", "gamma", engine=object())
CHAT = {"server": ["rust"], "client": ["vb", "python", "c"]}


def test_spread_puts_every_role_of_a_cell_on_the_next_node():
    plan = Placement(Nodes(A, B, C)).plan(CHAT)
    assert [plan[key].hostname for key in [("server", 0), ("client", 0), ("client", 1), ("client", 2)]] == \
        ["alpha", "beta", "gamma", "alpha"]


def test_place_pins_a_role_by_hostname_or_id_and_the_rest_spread():
    plan = Placement(Nodes(A, B, C), {"client": ["gamma", "idb"]}).plan(CHAT)
    assert plan["server", 0] is A
    assert [plan["client", i] for i in range(3)] == [C, B, C]


def test_place_refuses_a_node_it_does_not_know_and_a_hostname_two_nodes_share():
    with pytest.raises(ValueError, match="no node 'delta'.*alpha, beta, gamma"):
        Placement(Nodes(A, B, C), {"server": ["delta"]})
    twin = Node("idd", "alpha")
    with pytest.raises(ValueError, match="two nodes are called alpha: give its ID"):
        Placement(Nodes(A, twin), {"server": ["alpha"]})
    assert Placement(Nodes(A, twin), {"server": ["idd"]}).plan(CHAT)["server", 0] is twin


def launchers_on(*nodes, place=None):
    return SwarmLaunchers(Nodes(*nodes), {}, "test", Placement(Nodes(*nodes), place))


def test_a_fault_is_unsupported_where_its_target_s_node_has_no_engine_of_its_own():
    cell = {"source": ["python"], "worker": ["c", "rust"], "sink": ["python"]}
    fault = Fault("worker", "priced", 20)
    reason = launchers_on(A, B, place={"worker": ["beta"]}).unsupported(load_spec("valuation"), cell, fault)
    assert "kills worker 0 on node beta, whose own engine is not known (BTB_SWARM_NODES)" in reason
    assert launchers_on(A, B, place={"worker": ["alpha"]}).unsupported(load_spec("valuation"), cell, fault) is None
    assert launchers_on(A, B).unsupported(load_spec("valuation"), cell, None) is None


def test_ipc_is_unsupported_on_a_swarm():
    reason = launchers_on(A).unsupported(load_spec("chat").with_transport("ipc"), CHAT, None)
    assert "does not reach from one node to another" in reason


def test_place_and_registry_are_checked_before_anything_runs():
    def invoke(*args):
        done = subprocess.run([sys.executable, "-m", "invoke", "run", "chat", "--no-build", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        return done.returncode, done.stdout + done.stderr

    assert invoke("--place", "server=alpha") == (2, "error: --place is for --runner swarm\n")
    assert invoke("--registry", "127.0.0.1:5000", "--runner", "docker") == (2, "error: --registry is for --runner swarm\n")
    assert invoke("--runner", "swarm", "--place", "judge=alpha") == (
        2, "error: --place: chat has no role 'judge' (roles: server, client)\n")
    assert invoke("--runner", "swarm", "--place", "server") == (2, "error: --place 'server': write ROLE=NODE or ROLE=NODE,NODE\n")
    assert invoke("--runner", "boat") == (2, "error: --runner is process, docker, swarm, not 'boat'\n")


# --- on a local swarm ------------------------------------------------------------------------------


def unavailable(why):
    if os.environ.get("CI"):
        pytest.fail(f"CI starts a Docker engine that can run a swarm: {why}")
    pytest.skip(why)


class LocalSwarm:
    """The swarm the tests run on: made here with as many workers as a test needs, taken down at
    the end; one the tests did not make is used only if it has that many nodes."""

    def __init__(self, engine, base):
        self.engine, self.base, self.mine = engine, base, False

    def ensure(self, workers):
        swarm = self.engine.info().get("Swarm", {})
        if swarm.get("LocalNodeState") == "active":
            nodes = swarm.get("Nodes", 0)
            if self.mine and nodes != 1 + workers:
                localswarm.down(self.engine, log=lambda _: None)
            elif nodes == 1 + workers and Swarm(self.engine).usable:
                return Swarm(self.engine)
            else:
                pytest.skip(f"this engine is in a swarm of {nodes} nodes that these tests did not make; "
                            f"they need {1 + workers} and do not change it")
        try:
            localswarm.up(self.engine, workers, self.base if workers else None, log=lambda _: None)
        except docker.errors.APIError as error:
            unavailable(f"this engine cannot run a swarm: {error.explanation or error}")
        self.mine = True
        return Swarm(self.engine)

    def close(self):
        if self.mine:
            localswarm.down(self.engine, log=lambda _: None)


@pytest.fixture(scope="module")
def images(built):
    try:
        engine = containers.client()
        base = containers.base_image(engine)
        return engine, base, {lang: containers.ensure_image(engine, built[lang], log=lambda _: None)[0] for lang in built.registry.names()}
    except containers.DockerUnavailable as error:
        unavailable(str(error))


@pytest.fixture(scope="module")
def local_swarm(images):
    engine, base, _ = images
    made = LocalSwarm(engine, base)
    yield made
    made.close()


def run_on(swarm, refs, spec, chosen, fault=None, on_event=None):
    """One cell on the swarm, with the image references `refs`; everything of its run is swept after."""
    label = containers.new_run_label()
    try:
        return evaluate(spec, chosen, REGISTRY, new_run_dir(spec.example), on_event=on_event, fault=fault,
                        launcher=SwarmLaunchers(swarm, refs, label, Placement(swarm)))
    finally:
        containers.remove_labelled(swarm.manager, label)


def nothing_left(*engines):
    return [name for engine in engines for name in containers.leftovers(engine)]


CELLS = [
    ("chat", {"server": "rust", "client": ["vb", "python", "c"]}),
    ("ticker", {"publisher": "c", "proxy": "csharp", "subscriber": ["python", "fsharp"]}),
    ("valuation", {"source": "rust", "worker": ["vb", "c"], "sink": "python"}),
    ("query", {"engine": "csharp", "facade": ["python", "c", "fsharp"]}),
    ("desk", load_spec("desk").further[0]),
]


@pytest.mark.docker
@pytest.mark.parametrize("example, chosen", CELLS, ids=[example for example, _ in CELLS])
def test_a_cell_of_every_example_passes_on_a_one_node_swarm(built, images, local_swarm, example, chosen):
    swarm = local_swarm.ensure(workers=0)
    result = run_on(swarm, swarm.ship(images[2]), load_spec(example), chosen)
    assert result.status == "pass", result.problems
    [node] = swarm.usable
    assert {t.node for t in result.transcripts} == {node.hostname}
    assert all(t.where.endswith(f" on node {node.hostname}") for t in result.transcripts)
    assert result.runner == "swarm" and replay_of(load_spec(example), result).endswith(
        " --runner swarm " + " ".join(f"--place {role}={','.join(nodes)}" for role, nodes in result.placement.items()))
    assert nothing_left(images[0]) == []


@pytest.mark.docker
def test_a_worker_killed_mid_batch_on_a_swarm_loses_nothing(built, images, local_swarm):
    """The fault strikes through the node's own engine (here the manager's): at once, as locally."""
    swarm = local_swarm.ensure(workers=0)
    spec = load_spec("valuation")
    spec = spec.with_parameters(rate=spec.parameters["fault_rate"])
    result = run_on(swarm, swarm.ship(images[2]), spec, {"source": "python", "worker": ["fsharp", "rust"], "sink": "csharp"},
                    fault=Fault("worker", "priced", 20))
    assert result.status == "pass", result.problems
    [complete] = [e for t in result.transcripts if t.role == "sink" for e in t.events if e["event"] == "complete"]
    assert complete["resent"]


@pytest.mark.docker
def test_a_task_the_node_rejects_fails_the_cell_at_once_with_the_node_s_reason(built, images, local_swarm):
    swarm = local_swarm.ensure(workers=0)
    refs = dict(images[2], c="btb-c:not-built-anywhere")  # a tag no node has: the node rejects the task
    result = run_on(swarm, refs, load_spec("chat"), {"server": "python", "client": "c"})
    assert result.status == "fail", result.status  # not a timeout: the cell did not wait for it
    assert "client 0 (c): node " in result.detail and "rejected the task: No such image: btb-c:not-built-anywhere" in result.detail
    assert nothing_left(images[0]) == []


@pytest.mark.docker
def test_ctrl_c_during_a_swarm_cell_leaves_nothing_behind(built, images, local_swarm):
    swarm = local_swarm.ensure(workers=0)
    refs = swarm.ship(images[2])
    result = interrupted(lambda on_event: run_on(swarm, refs, load_spec("chat"), {"server": "python", "client": "python"},
                                                 on_event=on_event), wait=90)
    assert result.status != "pass"
    assert nothing_left(images[0]) == []


@pytest.mark.docker
def test_sigterm_to_a_swarm_grid_removes_every_service_and_network(images, local_swarm):
    """What a CI system does when it cancels a job: the exit is 143 with one line saying so, and
    the run's services, their containers and the cells' networks are gone."""
    local_swarm.ensure(workers=0)
    grid = subprocess.Popen([sys.executable, "-m", "invoke", "matrix", "chat", "--runner", "swarm", "--server", "c,python",
                             "--client", "c", "--parallel", "1", "--no-build"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    line = grid.stdout.readline()
    while line and not line.startswith("[1/2] "):
        line = grid.stdout.readline()
    assert line.startswith("[1/2] "), line
    grid.send_signal(signal.SIGTERM)
    rest = grid.stdout.read()
    assert grid.wait(120) == 143, rest[-1500:]
    assert rest.strip().splitlines()[-1].startswith("interrupted by SIGTERM: "), rest[-500:]
    assert nothing_left(images[0]) == []


@pytest.mark.docker
def test_a_cell_over_two_nodes_runs_its_roles_on_different_nodes(built, images, local_swarm):
    """A Docker-in-Docker worker joins; its images are loaded into its engine (then found there by
    image ID); spread puts the server and the first client on different nodes."""
    swarm = local_swarm.ensure(workers=1)
    assert len(swarm.usable) == 2 and all(node.engine for node in swarm.usable)
    tags = {lang: images[2][lang] for lang in ("rust", "python")}
    refs, loaded = swarm.ship(tags, log=lambda _: None), []
    swarm.ship(tags, log=loaded.append)  # a second time: every image is there already
    assert loaded and all("2 present" in line for line in loaded), loaded
    result = run_on(swarm, refs, load_spec("chat"), {"server": "rust", "client": ["python", "rust", "python"]})
    assert result.status == "pass", result.problems
    nodes = {t.label: t.node for t in result.transcripts}
    assert nodes["server 0 (rust)"] != nodes["client 0 (python)"]
    assert set(nodes.values()) == {node.hostname for node in swarm.usable}
    assert nothing_left(*(node.engine for node in swarm.usable)) == []


@pytest.fixture
def image_registry(tmp_path):
    """Debian's docker-registry (Distribution 2.8) on a free loopback port, for this test alone."""
    if shutil.which("docker-registry") is None:
        unavailable("no docker-registry (apt-get install docker-registry)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'blobs'}\n"
                      f"http:\n  addr: {address}\n")
    process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                               stderr=open(tmp_path / "registry.log", "wb"))
    try:
        deadline = time.monotonic() + 30
        while True:  # it has no readiness signal but its API: ask it
            try:
                if requests.get(f"http://{address}/v2/", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "registry.log").read_text()
            time.sleep(0.1)
        yield address
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.docker
def test_with_a_registry_every_node_runs_the_pushed_image_by_digest(built, images, local_swarm, image_registry):
    swarm = local_swarm.ensure(workers=0)
    pushed = []
    refs = swarm.ship({lang: images[2][lang] for lang in ("python", "c")}, image_registry, log=pushed.append)
    assert all(ref.startswith(f"{image_registry}/btb-{lang}:") and "@sha256:" in ref for lang, ref in refs.items()), refs
    assert len(pushed) == 2
    try:
        result = run_on(swarm, refs, load_spec("chat"), {"server": "python", "client": "c"})
    finally:
        for ref in refs.values():
            images[0].images.remove(ref.split("@")[0])  # the registry's tag; the image stays under its own
    assert result.status == "pass", result.problems
    assert all(t.where.startswith(f"{image_registry}/btb-") for t in result.transcripts)
