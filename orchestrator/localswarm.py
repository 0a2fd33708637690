"""A throw-away Docker Swarm on this machine (`invoke swarm.up` / `invoke swarm.down`), so that
`--runner swarm` runs where no cluster is at hand.

With no workers, the local engine becomes a one-node swarm on loopback (127.0.0.1:2377). With N
workers, each worker is a Docker engine in a container (Docker-in-Docker, from
docker/node.Dockerfile) on a bridge network of its own, `btb-swarm`: the manager listens and
advertises on that network's gateway, the only address of this machine the workers reach, and
each worker's engine answers on a Unix socket in runs/swarm/<worker>/, which the runner uses to
load images and to signal exactly (swarm.py). Containers are not privileged: every capability
but SYS_RESOURCE, and the host's cgroups, so that a worker's engine can make containers.

runs/swarm/state.json records the swarm this module made (its cluster ID, its workers): swarm.down
takes down only that one, and a swarm it did not make is never changed."""
import json
import shutil
import tempfile
import time
from pathlib import Path

import docker

from . import ROOT
from .containers import PROJECT, remove_labelled
from .registry import files_digest

FOLDER = ROOT / "runs" / "swarm"
STATE = FOLDER / "state.json"
LABEL = "org.beyond-the-box.swarm"  # the nodes and their network: not the project's label, which runs sweep
NODE_LABELS = {LABEL: "node", PROJECT: "swarm-node"}  # the base image's project label, overridden
NETWORK = "btb-swarm"
LOOPBACK = "127.0.0.1"
PORT = 2377
DOCKERFILE = ROOT / "docker" / "node.Dockerfile"
ANSWER = 60  # seconds a worker's engine may take to answer on its socket


class SwarmError(Exception):
    """The local swarm cannot be made or taken down; the message says why and what to do."""


def state():
    try:
        return json.loads(STATE.read_text())
    except (OSError, ValueError):
        return None


def engines_of(cluster):
    """The worker engines of the local swarm, if `cluster` is the one this module made."""
    made = state()
    return [worker["engine"] for worker in made["workers"]] if made and made["cluster"] == cluster else []


def _swarm(engine):
    return engine.info().get("Swarm", {})


def up(engine, workers, base, log=print):
    """Make the local swarm with `workers` worker nodes; nothing to do if it is up with as many."""
    swarm, made = _swarm(engine), state()
    if swarm.get("LocalNodeState") == "active":
        cluster = swarm.get("Cluster", {}).get("ID")
        if not made or made["cluster"] != cluster:
            raise SwarmError("this engine is in a swarm that `invoke swarm.up` did not make: it is left as it is "
                             "(`--runner swarm` uses it; `docker swarm leave` is yours to run)")
        if len(made["workers"]) != workers:
            raise SwarmError(f"the local swarm is up with {len(made['workers'])} workers: `invoke swarm.down` first")
        log(f"the local swarm is up: {1 + workers} nodes")
        return made
    started = time.monotonic()
    if workers == 0:
        engine.swarm.init(advertise_addr=LOOPBACK, listen_addr=f"{LOOPBACK}:{PORT}")
        address, network = LOOPBACK, None
    else:  # the workers cannot reach this machine's loopback: a network of their own, and its gateway
        network = engine.networks.create(NETWORK, driver="bridge", labels={LABEL: "network"})
        address = network.attrs["IPAM"]["Config"][0]["Gateway"]
        engine.swarm.init(advertise_addr=address, listen_addr=f"{address}:{PORT}")
    made = {"cluster": _swarm(engine)["Cluster"]["ID"], "address": address, "workers": []}
    FOLDER.mkdir(parents=True, exist_ok=True)
    STATE.write_text(json.dumps(made, indent=2))
    try:
        if workers:
            image = node_image(engine, base, log)
            token = engine.swarm.attrs["JoinTokens"]["Worker"]
            for number in range(1, workers + 1):
                made["workers"].append(_worker(engine, image, network, f"btb-worker-{number}", token, address))
                STATE.write_text(json.dumps(made, indent=2))
    except Exception:
        down(engine, log=lambda _: None)
        raise
    log(f"the local swarm is up: {1 + workers} nodes, manager on {address}:{PORT}, in {time.monotonic() - started:.1f} s")
    return made


def node_image(engine, base, log=print):
    """The Docker-in-Docker image a worker runs: Debian's docker.io on the base image."""
    base_name, base_id = base
    tag = f"btb-node:{files_digest([DOCKERFILE], DOCKERFILE.parent, base_id)[:16]}"
    try:
        engine.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    log(f"building {tag} from {DOCKERFILE.relative_to(ROOT)} on {base_name}")
    with tempfile.TemporaryDirectory(prefix="btb-node-") as context:  # the Dockerfile alone: it copies nothing in
        shutil.copy(DOCKERFILE, Path(context) / "Dockerfile")
        engine.images.build(path=context, tag=tag, rm=True, forcerm=True, pull=False, buildargs={"BASE": base_name},
                            labels=NODE_LABELS)
    return tag


def _worker(engine, image, network, name, token, manager):
    folder = FOLDER / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    socket = folder / "docker.sock"
    engine.containers.run(
        image, ["-H", "unix:///run/btb/docker.sock", "--cgroup-parent", f"/{name}"], name=name, hostname=name,
        detach=True, network=network.name, labels=NODE_LABELS,
        cap_add=["ALL"], cap_drop=["SYS_RESOURCE"],  # --privileged is refused here; this is enough
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        volumes={str(folder): {"bind": "/run/btb", "mode": "rw"}, "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
    )
    address = f"unix://{socket}"
    deadline = time.monotonic() + ANSWER
    while True:  # its engine has no readiness signal but its API: ask it
        try:
            worker = docker.DockerClient(base_url=address)
            worker.ping()
            break
        except docker.errors.DockerException:
            if time.monotonic() > deadline:
                raise SwarmError(f"the engine of {name} did not answer within {ANSWER} s: docker logs {name}") from None
            time.sleep(0.2)
    worker.swarm.join(remote_addrs=[f"{manager}:{PORT}"], join_token=token)
    return {"name": name, "engine": address}


def down(engine, log=print):
    """Take down the swarm `up` made: its workers, then this engine leaves. Anything else stays."""
    made, swarm = state(), _swarm(engine)
    cluster = swarm.get("Cluster", {}).get("ID")
    if swarm.get("LocalNodeState") == "active" and (not made or made["cluster"] != cluster):
        raise SwarmError("this engine is in a swarm that `invoke swarm.up` did not make: it is left as it is")
    removed = remove_labelled(engine) if swarm.get("LocalNodeState") == "active" else 0
    for container in engine.containers.list(all=True, filters={"label": f"{LABEL}=node"}):
        container.remove(force=True, v=True)  # v: its /var/lib/docker volume too
    if swarm.get("LocalNodeState") == "active":
        engine.swarm.leave(force=True)
        try:  # the bridge the swarm made for its tasks' way out, once nothing uses it
            engine.networks.get("docker_gwbridge").remove()
        except docker.errors.APIError:
            pass  # gone already, or in use by something else
    for network in engine.networks.list(filters={"label": f"{LABEL}=network"}):
        network.remove()
    shutil.rmtree(FOLDER, ignore_errors=True)
    log(f"the local swarm is down ({removed} leftover services, containers and networks removed)" if made or cluster
        else "no local swarm was up")


def hosts_lines(engine):
    """One line per node, for `invoke swarm.up` and `swarm.ls`."""
    return [f"{n.attrs['Description']['Hostname']:<14} {n.id}  {n.attrs['Spec']['Role']:<7} {n.attrs['Status']['State']}"
            for n in engine.nodes.list()]
