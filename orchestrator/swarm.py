"""The swarm runner (`--runner swarm`): a cell's roles spread over the nodes of a Docker Swarm.
Every role is a one-replica service (restart condition none) on an attachable overlay network of
the cell's own, reached by its alias (tcp://server-0:41234) with DNS round robin (dnsrr): no
virtual IP, so no IPVS is needed, and ZeroMQ's one peer, one connection is what it gets. The
checks, statuses and reports are the other runners'; `transcript.node` says where a role ran.

The manager is DOCKER_HOST's engine. Each node may also have its own engine known
($BTB_SWARM_NODES, or the ones `invoke swarm.up` made: localswarm.py): images are loaded into it
(`docker save | docker load`), and signals go to the container at once. Without it, a node gets
images only from a registry (--registry), and a stop goes through the manager, which signals a
task only after a fixed wait: too late for a fault, so a fault whose target would run there is
unsupported. The manager's own node always has its engine: DOCKER_HOST.

Everything carries the project's and the run's labels, and is removed by label (containers.py's
remove_labelled, the watchdog's too). The swarm itself is never changed: no node is added,
labelled or drained by a run."""
import itertools
import os
import re
import threading
import time
from dataclasses import dataclass

import docker
import requests
from docker.types import EndpointSpec, NetworkAttachmentConfig, RestartPolicy, ServiceMode
from docker.types.daemon import CancellableStream

from . import localswarm
from .containers import PROJECT, RUN, DockerLauncher, DockerUnavailable, engine_at, remove_labelled, tasks_of
from .runner import STOP_GRACE, CannotStart, Role

CELL = "org.beyond-the-box.cell"  # a task container's cell, to see it gone from its node
NODES = "BTB_SWARM_NODES"  # comma-separated engine addresses (unix://, tcp://, ssh://) of the swarm's nodes
POLL = 0.2  # seconds between two looks at a task's state: a swarm pushes no task events
STARTING = 120  # seconds a task may take to start (a node pulling from a registry) before the cell gives up
RESOLVE = 30  # seconds a role's container waits for its peers' aliases to resolve on its node
# A node learns another node's tasks by gossip, a moment after they start: a peer's alias may not
# resolve there yet when the runner has seen its ready. A role's connect to a name that does not
# resolve fails at once (libzmq and NetMQ resolve in connect), so the container asks the node's
# DNS itself, the one the role will ask, before it becomes the role. There is no event to wait on.
AWAIT_PEERS = """deadline=$(( $(date +%s) + $0 ))
while [ "$1" != "--" ]; do
  until getent hosts "$1" >/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "swarm runner: $1 did not resolve within $0 s" >&2; exit 125; }
    sleep 0.05
  done
  shift
done
shift
exec "$@"
"""
PEER = re.compile(r"tcp://([a-z]+-\d+):\d+")  # an endpoint published by alias (DockerLauncher.published)
NOT_YET = {"new", "pending", "assigned", "accepted", "ready", "preparing", "starting"}
OVER = {"complete", "failed", "shutdown", "rejected", "orphaned", "remove"}


@dataclass
class Node:
    id: str
    hostname: str
    engine: object = None  # the node's own Docker engine, when known


class Swarm:
    """The swarm behind DOCKER_HOST: its ready, active nodes, and the engines known of them."""

    def __init__(self, manager, addresses=None):
        self.manager = manager
        swarm = manager.info().get("Swarm", {})
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            raise DockerUnavailable("the engine at DOCKER_HOST is not a swarm manager: make a local swarm with "
                                    "`invoke swarm.up`, or point DOCKER_HOST at a manager of yours")
        self.cluster = swarm["Cluster"]["ID"]
        self.nodes = [Node(n.id, n.attrs["Description"]["Hostname"]) for n in manager.nodes.list()
                      if n.attrs["Status"]["State"] == "ready" and n.attrs["Spec"]["Availability"] == "active"]
        engines = {swarm["NodeID"]: manager}
        if addresses is None:
            addresses = [a.strip() for a in os.environ.get(NODES, "").split(",") if a.strip()] or \
                localswarm.engines_of(self.cluster)
        for address in addresses:
            engine = engine_at(address)
            node_id = engine.info().get("Swarm", {}).get("NodeID")
            if not any(n.id == node_id for n in self.nodes):
                raise DockerUnavailable(f"{NODES}: the engine at {address} is not a ready, active node of this swarm")
            engines[node_id] = engine
        for node in self.nodes:
            node.engine = engines.get(node.id)
        self.usable = list(self.nodes)  # the nodes that have the run's images (ship() narrows it)
        self.notes = []

    def find(self, name):
        """A node by hostname or ID; a hostname two nodes share must be given by ID."""
        named = [n for n in self.usable if name in (n.hostname, n.id)]
        if len(named) == 1:
            return named[0]
        if named:
            raise ValueError(f"two nodes are called {name}: give its ID ({', '.join(n.id for n in named)})")
        known = ", ".join(n.hostname for n in self.usable)
        raise ValueError(f"no node {name!r} among those that can run this run's roles ({known})")

    def ship(self, images, registry=None, log=print):
        """Every image on every node that will run roles: the image references the services use.
        With `registry`: pushed there once, and pulled by digest by each node (the same bytes
        everywhere). Without: loaded into each node whose engine is known (`docker save | docker
        load`), skipped where the node has the same image ID already, tagged if only the tag was
        missing; nodes with no known engine run nothing of this run."""
        if registry:
            return {lang: self._push(tag, registry, log) for lang, tag in images.items()}
        for node in self.nodes:
            if node.engine is None:
                self.notes.append(f"node {node.hostname} runs nothing: no engine of it is known ({NODES}) to load images "
                                  f"into, and no --registry was given")
                continue
            if node.engine is self.manager:
                continue  # the images were built there
            started, done = time.monotonic(), {"loaded": 0, "tagged": 0, "present": 0}
            for tag in dict.fromkeys(images.values()):
                done[self._load(node, tag)] += 1
            log(f"node {node.hostname}: images {', '.join(f'{n} {what}' for what, n in done.items() if n)} "
                f"in {time.monotonic() - started:.1f} s")
        self.usable = [n for n in self.nodes if n.engine is not None]
        return dict(images)

    def _load(self, node, tag):
        image = self.manager.images.get(tag)
        try:
            if node.engine.images.get(tag).id == image.id:
                return "present"
        except docker.errors.ImageNotFound:
            pass
        try:
            node.engine.images.get(image.id).tag(*tag.split(":"))  # the same bytes under another tag
            return "tagged"
        except docker.errors.ImageNotFound:
            pass
        # Saved by this tag (its other tags stay behind), streamed: the archive is never held whole.
        node.engine.images.load(self.manager.api.get_image(tag))
        if node.engine.images.get(tag).id != image.id:
            raise DockerUnavailable(f"node {node.hostname}: {tag} loaded with another image ID")
        return "loaded"

    def _push(self, tag, registry, log):
        repository, version = tag.split(":")
        remote = f"{registry}/{repository}"
        image = self.manager.images.get(tag)
        image.tag(remote, version)
        started = time.monotonic()
        for line in self.manager.images.push(remote, version, stream=True, decode=True):
            if "error" in line:
                raise DockerUnavailable(f"pushing {remote}:{version} failed: {line['error']}")
        digests = [d for d in self.manager.images.get(f"{remote}:{version}").attrs["RepoDigests"] if d.startswith(remote + "@")]
        if not digests:
            raise DockerUnavailable(f"pushing {remote}:{version}: the registry returned no digest")
        log(f"pushed {tag} to {registry} in {time.monotonic() - started:.1f} s")
        return f"{remote}:{version}@{digests[0].split('@')[1]}"  # pulled by digest: the very image built here


class Placement:
    """Which node runs which role instance: `fixed` (role -> nodes, from --place ROLE=NODE[,NODE])
    first, then the rule: spread, every other instance on the next node in turn, so that a cell's
    roles are on different nodes wherever there are enough of them."""

    def __init__(self, swarm, fixed=None):
        self.swarm, self.fixed = swarm, {role: [swarm.find(name) for name in names] for role, names in (fixed or {}).items()}

    def plan(self, roles):
        nodes, turn, plan = self.swarm.usable, itertools.count(), {}
        for role, langs in roles.items():
            for index in range(len(langs)):
                chosen = self.fixed.get(role)
                plan[role, index] = chosen[index % len(chosen)] if chosen else nodes[next(turn) % len(nodes)]
        return plan


class SwarmRole(Role):
    """A role as a one-replica service pinned to a node; its stdout comes from the service's logs."""

    def __init__(self, transcript, launcher, image, node, alias, on_event):
        super().__init__(transcript, on_event)
        self.manager, self.node, self.over = launcher.manager, node, threading.Event()
        self.task = {}
        suffix = "-again" if transcript.restarted else ""
        peers = sorted({m.group(1) for arg in transcript.argv for m in PEER.finditer(str(arg))} - {alias})
        program = launcher.entrypoint(image)
        command = ["/bin/sh", "-c", AWAIT_PEERS, str(RESOLVE), *peers, "--", *program] if peers and program else None
        try:
            self.service = self.manager.services.create(
                image, command=command, args=transcript.argv, name=f"{launcher.prefix}-{alias}{suffix}", hostname=alias,
                labels=launcher.labels, container_labels={**launcher.labels, CELL: launcher.prefix},
                networks=[NetworkAttachmentConfig(launcher.network.id, aliases=[alias])],
                endpoint_spec=EndpointSpec(mode="dnsrr"),  # no virtual IP: the alias resolves to the task itself
                restart_policy=RestartPolicy(condition="none"), mode=ServiceMode("replicated", 1),
                constraints=[f"node.id=={node.id}"], stop_grace_period=STOP_GRACE * 10**9,
            )
        except docker.errors.APIError as error:
            raise CannotStart(f"{transcript.label}: the manager refused the service: {error.explanation or error}") from error
        launcher.services.append(self.service)
        self.gone, self.code = False, None
        try:
            self._started(node)
        except CannotStart:
            self._remove()
            raise
        ran_on = next((n.hostname for n in launcher.swarm.nodes if n.id == self.task.get("NodeID")), self.task.get("NodeID"))
        transcript.node, transcript.where = ran_on, f"{image} as {alias} on node {ran_on}"
        self.stream = None
        self._start_reading(self._lines())
        threading.Thread(target=self._watch, daemon=True, name=f"task-{alias}").start()

    def _started(self, node):
        """Wait until the task has left the states before its container runs; a task the node
        rejected (an image it lacks) is a role that cannot start, with the node's reason."""
        state = self._wait(lambda s: s not in NOT_YET, time.monotonic() + STARTING)
        status = self.task.get("Status", {})
        if state in NOT_YET:
            raise CannotStart(f"{self.t.label}: its task on node {node.hostname} was still {state} after {STARTING} s")
        if state in ("rejected", "failed", "remove") and not self._container():
            raise CannotStart(f"{self.t.label}: node {node.hostname} {state} the task: {status.get('Err') or status.get('Message')}")

    def _state(self):
        if self.gone:
            return "remove"
        try:
            tasks = self.manager.api.tasks(filters={"service": self.service.id})
        except docker.errors.APIError:
            tasks = []
        if tasks:
            self.task = max(tasks, key=lambda t: t["CreatedAt"])
        elif self.task:
            return "remove"  # the service was removed (a sweep) after its task had started
        return self.task.get("Status", {}).get("State", "new")

    def _wait(self, done, deadline):
        """Look at the task's state until `done(state)` or the deadline: the swarm has no push."""
        state = self._state()
        while not done(state) and time.monotonic() < deadline:
            time.sleep(POLL)
            state = self._state()
        return state

    def _watch(self):
        """Wait for the task's end, then close the log stream (it would stay open for ever)."""
        self._wait(lambda state: state in OVER, float("inf"))
        self.code = self.task.get("Status", {}).get("ContainerStatus", {}).get("ExitCode")
        self.over.set()
        if self.stream is not None:
            self.stream.close()

    def _logs(self, follow, stdout=True, stderr=False):
        api = self.manager.api
        params = {"follow": follow, "stdout": stdout, "stderr": stderr, "timestamps": False, "details": False, "tail": "all"}
        response = api._get(api._url("/services/{0}/logs", self.service.id), params=params, stream=True)
        api._raise_for_status(response)
        return CancellableStream(api._multiplexed_response_stream_helper(response), response)

    def _lines(self):
        """The task's stdout as lines, while it runs; once it has ended, whatever the stream had not
        brought yet, from the whole log (the follow stream is a prefix of it)."""
        pending, seen = b"", 0
        try:
            self.stream = self._logs(follow=True)
            if self.over.is_set():
                self.stream.close()
            for chunk in self.stream:
                seen += len(chunk)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                yield from (line + b"\n" for line in lines)
        except Exception:  # noqa: BLE001 - whatever a stream closed under its reader raises (urllib3, OSError)
            pass  # closed by _watch: the task is over; the whole log below has every line
        self.over.wait()
        try:
            pending += b"".join(self._logs(follow=False))[seen:]
        except docker.errors.APIError:
            pass  # the service is gone: a Ctrl-C sweep
        *lines, pending = pending.split(b"\n")
        yield from (line + b"\n" for line in lines)
        if pending:
            yield pending

    def wait_exit(self, deadline):
        if not self.over.wait(max(0.01, deadline - time.monotonic())):
            return False
        self.t.exit_code = self.code
        self.reader.join(max(0.01, deadline - time.monotonic()))
        return not self.reader.is_alive()

    def _container(self):
        return self.task.get("Status", {}).get("ContainerStatus", {}).get("ContainerID")

    def _signal(self, name):
        """Through the node's own engine, at once; without one, the manager stops the task (SIGTERM,
        then SIGKILL after the grace period) after its fixed wait."""
        if self.over.is_set():
            return
        try:
            if self.node.engine is not None and self._container():
                self.node.engine.api.kill(self._container(), signal=name)
            else:
                self.service.scale(0)
        except docker.errors.APIError:
            pass  # it has stopped already

    def terminate(self):
        self._signal("SIGTERM")

    def kill(self):
        self._signal("SIGKILL")

    def reap(self):
        """Stop it whatever state it is in, keep its stderr, then remove the service."""
        ended = self.over.is_set()  # by itself: its exit code counts (a role killed now has none)
        try:
            self.kill()
            self.over.wait(STOP_GRACE + 5)  # through the manager: its wait, then the grace period
            if ended and self.t.exit_code is None:
                self.t.exit_code = self.code
            self.t.stderr_path.write_bytes(b"".join(self._logs(follow=False, stdout=False, stderr=True)))
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            pass
        finally:
            self.t.ended_at = time.time()
            self._remove()
            self.reader.join(timeout=STOP_GRACE)
            self._forget()

    def _remove(self):
        self.gone = True  # _watch stops looking
        try:
            self.service.remove()
        except docker.errors.DockerException:
            pass  # remove_labelled() sweeps whatever is left
        self.over.set()


class SwarmLauncher(DockerLauncher):
    """One cell: an overlay network of its own, a service per role on the node its plan names.
    Endpoints are the docker runner's: bind on 0.0.0.0, reached by alias."""

    name = "swarm"

    def __init__(self, run, roles):
        self.run, self.swarm, self.manager, self.images = run, run.swarm, run.swarm.manager, run.images
        self.labels = {PROJECT: "btb", RUN: run.run_label}
        self.prefix = f"btb-{run.run_label}-{next(run.cells)}"
        self.plan = run.placement.plan(roles)
        self.network = self.manager.networks.create(self.prefix, driver="overlay", attachable=True, labels=self.labels)
        self.services = []

    def entrypoint(self, image):
        """The image's ENTRYPOINT (the role's program), or None where the manager has no such image:
        the images were built or pushed there, so no node has it either, and the node says so."""
        if image not in self.run.entrypoints:
            try:
                self.run.entrypoints[image] = self.manager.images.get(image).attrs["Config"]["Entrypoint"]
            except docker.errors.ImageNotFound:
                self.run.entrypoints[image] = None
        return self.run.entrypoints[image]

    def start(self, transcript, language, on_event):
        transcript.stderr_path.parent.mkdir(parents=True, exist_ok=True)
        node = self.plan[transcript.role, transcript.index]
        alias = f"{transcript.role}-{transcript.index}"
        return SwarmRole(transcript, self, self.images[language.name], node, alias, on_event)

    def share(self, folder, path):
        raise CannotStart("ipc:// is a Unix socket: it does not reach from one node to another")  # unsupported() says so first

    def close(self):
        """The network goes once its tasks are gone, and their containers from every node whose
        engine is known (a node removes them a moment after the manager forgets the tasks)."""
        gone_by = time.monotonic() + 60
        try:
            while (tasks_of(self.manager, {s.id for s in self.services}) or self._containers()) and time.monotonic() < gone_by:
                time.sleep(POLL)
            self.network.remove()
        except docker.errors.DockerException:
            pass  # the run's sweep (SwarmLaunchers.sweep) removes whatever is left


    def _containers(self):
        return [c for node in self.swarm.usable if node.engine is not None
                for c in node.engine.containers.list(all=True, ignore_removed=True, filters={"label": f"{CELL}={self.prefix}"})]


class SwarmLaunchers:
    """What a run hands the grid: a SwarmLauncher per cell, on the run's images and placement."""

    name = "swarm"

    def __init__(self, swarm, images, run_label, placement):
        self.swarm, self.images, self.run_label, self.placement = swarm, images, run_label, placement
        self.cells = itertools.count(1)
        self.entrypoints = {}  # image -> its ENTRYPOINT, which a role's command runs after the peers resolve

    def __call__(self, roles):
        return SwarmLauncher(self, roles)

    def sweep(self):
        """Everything of the run, on the manager and on every node whose engine is known."""
        removed = remove_labelled(self.swarm.manager, self.run_label)
        return removed + sum(remove_labelled(node.engine, self.run_label) for node in self.swarm.nodes
                             if node.engine is not None and node.engine is not self.swarm.manager)

    def unsupported(self, spec, roles, fault):
        """Why this cell cannot run on this swarm, or None."""
        if spec.transport == "ipc":
            return "over ipc on a swarm: ipc:// is a Unix socket, which does not reach from one node to another"
        if fault and fault.role in roles:
            node = self.placement.plan(roles)[fault.role, 0]
            if node.engine is None:
                return (f"the fault kills {fault.role} 0 on node {node.hostname}, whose own engine is not known ({NODES}): "
                        f"through the manager a task is signalled only after a fixed wait, too late for an exact fault")
        return None
