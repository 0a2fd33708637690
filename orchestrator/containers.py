"""The container runner: every role in a container of its own, one Docker network per cell, roles
reaching each other by network alias (tcp://server-0:41234). Containers and networks are started
with testcontainers; images are built from docker/*.Dockerfile with the Docker SDK, tagged by a
hash of their inputs. DOCKER_HOST is respected, so the roles may run on another machine's engine.

Everything this module creates carries the project label, and the run's own label, and is removed
by that label at the end of a cell, a run, a failure or Ctrl-C; if the orchestrator is SIGKILLed,
its watchdog (watchdog.py) removes them."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

# testcontainers' reaper (Ryuk) is an image from a registry; offline it cannot be pulled. This
# module removes what it creates itself, by label, so the reaper is not needed.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import docker  # noqa: E402
import requests  # noqa: E402
from testcontainers.core.container import DockerContainer  # noqa: E402
from testcontainers.core.network import Network  # noqa: E402

from . import ROOT  # noqa: E402
from .registry import contract_args, files_digest  # noqa: E402
from .runner import STOP_GRACE, CannotStart, Role  # noqa: E402

PROJECT = "org.beyond-the-box.project"
RUN = "org.beyond-the-box.run"
PUBLIC_BASE = "debian:bookworm-slim"
OFFLINE_BASE = "btb-base:bookworm"
STAGE = ROOT / "docker" / ".stage"
ANY_HOST = re.compile(r"^tcp://(?:0\.0\.0\.0|127\.0\.0\.1|\*|localhost):(\d+)$")


class DockerUnavailable(Exception):
    """No Docker engine answers, or it lacks what the runner needs; the message says what to do."""


def client():
    """DOCKER_HOST's engine (ssh://user@host goes through the ssh command), or the local one."""
    try:
        engine = docker.from_env(use_ssh_client=os.environ.get("DOCKER_HOST", "").startswith("ssh://"))
        engine.ping()
        return engine
    except docker.errors.DockerException as error:
        raise DockerUnavailable(f"no Docker engine answers ({error}); start one with `invoke docker.up`") from error


def engine_at(address):
    """The engine at `address` (unix://, tcp://, ssh://), answering, or DockerUnavailable."""
    try:
        engine = docker.DockerClient(base_url=address, use_ssh_client=address.startswith("ssh://"))
        engine.ping()
        return engine
    except docker.errors.DockerException as error:
        raise DockerUnavailable(f"no Docker engine answers at {address} ({error})") from error


# --- images ------------------------------------------------------------------------------------


def base_image(engine):
    """The image every role image builds FROM: $BTB_DOCKER_BASE if set, else debian:bookworm-slim
    if the engine has it, else the offline one `invoke docker.base` makes."""
    wanted = os.environ.get("BTB_DOCKER_BASE")
    for name in ([wanted] if wanted else [PUBLIC_BASE, OFFLINE_BASE]):
        try:
            return name, engine.images.get(name).id
        except docker.errors.ImageNotFound:
            continue
    raise DockerUnavailable(
        f"no base image: `docker pull {PUBLIC_BASE}` where a registry is reachable, "
        f"or `invoke docker.base` to build {OFFLINE_BASE} offline with debootstrap"
    )


def build_offline_base(engine, log=print):
    """debootstrap a minimal Debian bookworm and import it as OFFLINE_BASE. Needs root."""
    with tempfile.TemporaryDirectory(prefix="btb-rootfs-") as rootfs:
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", rootfs], check=True, capture_output=True)
        # What a slim image leaves out too: package lists and caches, documentation.
        for junk in ("var/lib/apt/lists", "var/cache/apt", "usr/share/doc", "usr/share/man", "usr/share/locale"):
            shutil.rmtree(Path(rootfs, junk), ignore_errors=True)
            Path(rootfs, junk).mkdir(parents=True, exist_ok=True)
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        repository, tag = OFFLINE_BASE.split(":")
        engine.api.import_image_from_stream(tar.stdout, repository=repository, tag=tag,
                                            changes=[f"LABEL {PROJECT}=btb", 'CMD ["bash"]'])
        tar.wait()
    log(f"imported {OFFLINE_BASE}")
    return engine.images.get(OFFLINE_BASE)



def ensure_image(engine, language, log=print):
    """The tag of `language`'s image, built only if no image has this exact set of inputs.
    Returns (tag, seconds spent building, 0 when it was cached)."""
    if not language.docker:
        raise DockerUnavailable(f"{language.name} has no docker entry in the registry")
    base, base_id = base_image(engine)
    context = STAGE / language.name
    shutil.rmtree(context, ignore_errors=True)
    app = context / "app"
    app.mkdir(parents=True)
    for step in language.docker["stage"]:
        argv = [language.expand(part, stage=app) for part in step]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise DockerUnavailable(f"staging {language.name} failed: {' '.join(argv)}\n{done.stdout}{done.stderr}")
    for cache in app.rglob("__pycache__"):
        shutil.rmtree(cache)
    dockerfile = ROOT / language.docker["dockerfile"]
    shutil.copy(dockerfile, context / "Dockerfile")
    packages = " ".join(language.docker["packages"])
    tag = f"btb-{language.name}:{files_digest(Path(context).rglob('*'), context, base_id + packages)[:16]}"
    try:
        engine.images.get(tag)
        return tag, 0.0
    except docker.errors.ImageNotFound:
        pass
    started = time.monotonic()
    log(f"building {tag} from {dockerfile.relative_to(ROOT)} on {base}")
    try:
        engine.images.build(
            path=str(context), tag=tag, rm=True, forcerm=True, pull=False,
            buildargs={"BASE": base, "PACKAGES": packages}, labels={PROJECT: "btb"},
        )
    except docker.errors.BuildError as error:
        output = "".join(str(line.get("stream", line)) for line in error.build_log)
        raise DockerUnavailable(f"building {tag} failed: {error}\n{output[-2000:]}") from error
    return tag, time.monotonic() - started


def image_size(engine, tag):
    return engine.images.get(tag).attrs["Size"]


# --- running a cell ------------------------------------------------------------------------------


class ContainerRole(Role):
    """A role as a container on the cell's network; its stdout is read live from the logs."""

    def __init__(self, transcript, image, network, alias, labels, on_event, mounts=()):
        super().__init__(transcript, on_event)
        transcript.where = f"{image} as {alias}"
        self.container = (
            DockerContainer(image)
            .with_command(transcript.argv)
            .with_network(network)
            .with_network_aliases(alias)
            .with_kwargs(labels=labels)
        )
        for host, inside in mounts:  # the cell's ipc folder: Unix sockets reach across containers through it
            self.container.with_volume_mapping(str(host), str(inside), "rw")
        try:
            self.container.start()
        except docker.errors.DockerException as error:
            raise CannotStart(f"{transcript.label}: cannot start a container of {image}: {error}") from error
        self.wrapped = self.container.get_wrapped_container()
        self._start_reading(self._lines())

    def _lines(self):
        """The container's stdout as lines: the log stream comes in chunks of any size."""
        pending = b""
        for chunk in self.wrapped.logs(stream=True, follow=True, stdout=True, stderr=False):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line + b"\n"
        if pending:
            yield pending

    def wait_exit(self, deadline):
        try:
            status = self.wrapped.wait(timeout=max(0.01, deadline - time.monotonic()))
        except requests.exceptions.RequestException:
            return False
        self.t.exit_code = status["StatusCode"]
        self.reader.join()
        return True

    def terminate(self):
        self._signal("SIGTERM")

    def kill(self):
        self._signal("SIGKILL")

    def _signal(self, name):
        try:
            self.wrapped.kill(signal=name)
        except docker.errors.APIError:
            pass  # it has stopped already

    def reap(self):
        """Keep its stderr, then remove the container whatever state it is in."""
        try:
            self.wrapped.reload()
            if self.t.exit_code is None and self.wrapped.status == "exited":
                self.t.exit_code = self.wrapped.attrs["State"]["ExitCode"]
            self.kill()
            self.t.stderr_path.write_bytes(self.wrapped.logs(stdout=False, stderr=True))
        except docker.errors.DockerException:
            pass
        finally:
            self.t.ended_at = time.time()
            try:
                self.container.stop(force=True)
            except docker.errors.DockerException:
                pass
            self.reader.join(timeout=STOP_GRACE)
            self._forget()


class DockerLauncher:
    """One cell's roles as containers on one network of its own."""

    name = "docker"

    def __init__(self, images, run_label):
        self.images = images  # language -> image tag
        self.labels = {PROJECT: "btb", RUN: run_label}
        self.network = Network(docker_network_kw={"labels": self.labels}).create()
        self.mounts = []

    def command(self, language, example, role, flags):
        return contract_args(example, role, flags)  # the image's entrypoint is the program

    def adapt(self, flags):
        """Bind on the container's own interface, not its loopback: peers come over the network."""
        return {name: re.sub(r"^tcp://127\.0\.0\.1:", "tcp://0.0.0.0:", value) if isinstance(value, str) else value
                for name, value in flags.items()}

    def start(self, transcript, language, on_event):
        transcript.stderr_path.parent.mkdir(parents=True, exist_ok=True)
        alias = f"{transcript.role}-{transcript.index}"
        return ContainerRole(transcript, self.images[language.name], self.network, alias, self.labels, on_event, self.mounts)

    def published(self, role, index, event):
        """A bound endpoint as the other containers reach it: by the role's network alias."""
        if event is None:
            return None
        return {key: ANY_HOST.sub(rf"tcp://{role}-{index}:\1", value) if isinstance(value, str) else value
                for key, value in event.items()}

    def share(self, folder, path):
        """Mount `folder` at `path` in every container of the cell (its ipc sockets' folder)."""
        self.mounts.append((folder, path))

    def close(self):
        try:
            self.network.remove()
        except docker.errors.DockerException:
            pass  # remove_labelled() sweeps whatever is left


class DockerLaunchers:
    """What a run hands the grid: one DockerLauncher per cell, all on the run's images and label."""

    name = "docker"

    def __init__(self, images, run_label):
        self.images, self.run_label = images, run_label

    def __call__(self, roles=None):
        return DockerLauncher(self.images, self.run_label)


def new_run_label():
    return uuid.uuid4().hex[:12]


def start_watchdog(run_label):
    """The process that removes the run's containers if this one dies of SIGKILL (watchdog.py). In
    a session of its own: a Ctrl-C in the terminal is for the orchestrator, which cleans up itself."""
    return subprocess.Popen([sys.executable, "-m", "orchestrator.watchdog", run_label, str(os.getpid())], cwd=ROOT,
                            start_new_session=True)


def remove_labelled(engine, run_label=None):
    """Remove every service, container and network of the project (or of one run). Returns how
    many. A network goes only once its services' tasks are gone: the swarm refuses it before."""
    selector = f"{RUN}={run_label}" if run_label else f"{PROJECT}=btb"
    services = _services(engine, selector)
    removed = sum(_remove(service) for service in services)
    gone_by = time.monotonic() + 60
    while tasks_of(engine, [s.id for s in services]) and time.monotonic() < gone_by:
        time.sleep(0.2)  # a swarm pushes no task events: look again
    removed += sum(_remove(container, force=True) for container in engine.containers.list(all=True, ignore_removed=True, filters={"label": selector}))
    return removed + sum(_remove(network) for network in engine.networks.list(filters={"label": selector}))


def tasks_of(engine, service_ids):
    """The tasks the swarm still holds of these services, removed ones included (a filter by
    service is refused once the service is gone)."""
    if not service_ids:
        return []
    return [task for task in engine.api.tasks() if task["ServiceID"] in service_ids]


def _services(engine, selector):
    """The swarm services with this label; none where the engine is no swarm manager."""
    try:
        return engine.services.list(filters={"label": selector})
    except docker.errors.APIError:
        return []  # not a manager: this engine has no services


def _remove(thing, **options):
    try:
        thing.remove(**options)
        return 1
    except docker.errors.NotFound:
        return 0  # removed meanwhile: by its cell, or by the watchdog
    except docker.errors.APIError as error:
        if error.status_code == 404:
            return 0
        raise


def leftovers(engine):
    """The project's services, containers and networks that still exist, by name."""
    services = [s.name for s in _services(engine, f"{PROJECT}=btb")]
    containers = [c.name for c in engine.containers.list(all=True, ignore_removed=True, filters={"label": f"{PROJECT}=btb"})]
    networks = [n.name for n in engine.networks.list(filters={"label": f"{PROJECT}=btb"})]
    return services + containers + networks
