import threading

import pytest
import zmq

from orchestrator.registry import load_registry

# The registry (orchestrator/languages.yaml, or the file BTB_REGISTRY names) is the only list of
# languages: the tests take every language, role and capability from it.
REGISTRY = load_registry()
LANGS = REGISTRY.names()


def interrupted(cell, wait=60):
    """Run `cell(on_event)` (one cell, on any runner) in a thread and stop everything as Ctrl-C does
    at its first event; its result, once it has ended (it must, within `wait` s after the stop)."""
    from orchestrator import runner

    started, outcome = threading.Event(), {}
    thread = threading.Thread(target=lambda: outcome.setdefault("result", cell(lambda t, e: started.set())))
    thread.start()
    try:
        assert started.wait(60), "no role reported anything"
        runner.kill_everything()
        thread.join(wait)
        assert not thread.is_alive(), f"the cell was still running {wait} s after the stop"
    finally:
        runner.aborting.clear()
    return outcome["result"]


def unimplemented(lang, example, role):
    return f"{lang} does not implement {example} {role} (implements: in the registry)"


def require(lang, example, role):
    """Skip the running test unless `lang` implements `example role`: for a role that is one case
    of a test, or a second role it runs in the same language."""
    if not REGISTRY[lang].supports(example, role):
        pytest.skip(unimplemented(lang, example, role))


def first_language(programs, having=(), lacking=None):
    """The first registry language that implements every (example, role) of `programs`, lacks none
    of the features `having` and, when given, lacks `lacking`: the other side of a test about
    another language. The test is skipped when the registry has none."""
    for name in LANGS:
        language = REGISTRY[name]
        if (all(language.supports(example, role) for example, role in programs)
                and not any(feature in language.lacks for feature in having)
                and (lacking is None or lacking in language.lacks)):
            return name
    wanted = " and ".join(" ".join(program) for program in programs)
    wanted += f", with {', '.join(having)}" if having else ""
    wanted += f", lacking {lacking}" if lacking else ""
    pytest.skip(f"no language of the registry implements {wanted}")


def languages(example=None, role=None, lacking=None, having=None):
    """pytest parameters, one per registry language: a language that does not implement `example`
    `role`, or does not lack the feature `lacking`, or lacks the feature `having`, is skipped with
    the registry's reason. `languages("chat", "server", having="curve")`."""
    params = []
    for name in LANGS:
        language, why = REGISTRY[name], None
        if example and not language.supports(example, role):
            why = unimplemented(name, example, role)
        elif lacking and lacking not in language.lacks:
            why = f"{name} has {lacking} (the test is for a language that lacks it)"
        elif having and having in language.lacks:
            why = f"{name} lacks {having}: {language.lacks[having]}"
        params.append(pytest.param(name, id=name, marks=[pytest.mark.skip(reason=why)] if why else []))
    return params


def pytest_addoption(parser):
    parser.addoption("--lang", metavar="LANG", help="only the tests that run LANG (the conformance kit: invoke conform)")


def involves(item, lang):
    """Whether a test runs `lang`: a parameter whose value is that language (or a list holding it),
    or a `languages(...)` mark naming it (a grid cell)."""
    marked = [name for mark in item.iter_markers("languages") for name in mark.args]
    values = getattr(getattr(item, "callspec", None), "params", {}).values()
    return lang in marked or any(value == lang or (isinstance(value, (list, tuple)) and lang in value) for value in values)


def pytest_configure(config):
    config.addinivalue_line("markers", "languages(*names): the languages a test runs, when no parameter says it")


def pytest_collection_modifyitems(config, items):
    lang = config.getoption("--lang")
    if lang is None:
        return
    if lang not in LANGS:
        raise pytest.UsageError(f"--lang {lang}: not in the registry ({', '.join(LANGS)})")
    kept = [item for item in items if involves(item, lang)]
    config.hook.pytest_deselected(items=[item for item in items if not involves(item, lang)])
    items[:] = kept


@pytest.fixture(scope="session")
def registry():
    return REGISTRY


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
