import pytest
import zmq

from orchestrator.registry import load_registry


@pytest.fixture(scope="session")
def registry():
    return load_registry()


class Built:
    """The registry, building each language the first time a test asks for it."""

    def __init__(self, registry):
        self.registry, self.done = registry, set()

    def __getitem__(self, name):
        language = self.registry[name]
        if name not in self.done:
            language.run_build()
            self.done.add(name)
        return language


@pytest.fixture(scope="session")
def built(registry):
    return Built(registry)


@pytest.fixture
def start_role(built, tmp_path):
    """Start one role of one language under the launch contract; every process is reaped after."""
    from orchestrator.runner import RoleProcess, RoleTranscript

    started = []

    def start(lang, example, role, **flags):
        language = built[lang]
        stem = f"{role}{len(started)}-{lang}"
        transcript = RoleTranscript(
            role, len(started), lang, flags, language.command(example, role, flags),
            events_path=tmp_path / f"{stem}.jsonl", stderr_path=tmp_path / f"{stem}.stderr",
        )
        process = RoleProcess(transcript, language.environment(), None)
        started.append(process)
        return process

    yield start
    for process in started:
        process.reap()


@pytest.fixture
def context():
    """A ZeroMQ context for a test's own sockets, destroyed without lingering."""
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)
