"""The integration tests: every grid, every language against every other, through the orchestrator."""
import math

import pytest

from orchestrator import LANGUAGES
from orchestrator.matrix import evaluate, mixed_cells, new_run_dir, run_matrix
from orchestrator.spec import load_spec

PARALLEL = 3


def run_grid(built, example, dimensions, extra=False):
    """Every cell of the grid, plus the spec's mixed and further cells with `extra`: all must pass."""
    for lang in LANGUAGES:
        built[lang]  # build before the clock starts
    spec = load_spec(example)
    extra_cells = mixed_cells(spec, dimensions) if extra else []
    results, _, run_dir = run_matrix(spec, dimensions, built.registry, parallel=PARALLEL, extra_cells=extra_cells)
    expected = math.prod(len(langs) for langs in dimensions.values()) + len(extra_cells)
    assert len(results) == expected
    failures = [f"{r.roles}: {r.status}: {r.detail}" for r in results if r.status != "pass"]
    assert not failures, f"{len(failures)} of {expected} cells did not pass (logs in {run_dir}):\n" + "\n".join(failures)
    return results


def events_of(result, role, name):
    return [[e for e in t.events if e["event"] == name] for t in result.transcripts if t.role == role]


@pytest.mark.grid
def test_the_full_chat_grid_passes(built):
    results = run_grid(built, "chat", {"server": LANGUAGES, "client": LANGUAGES})
    for result in results:  # every cell really ran: three clients that each saw the 15 posts
        assert [len(received) for received in events_of(result, "client", "received")] == [15, 15, 15]


@pytest.mark.grid
def test_one_chat_cell_can_mix_every_client_language(built):
    result = evaluate(load_spec("chat"), {"server": "c", "client": list(LANGUAGES)}, built.registry, new_run_dir("chat"))
    assert result.status == "pass", result.problems
    assert [t.lang for t in result.transcripts if t.role == "client"] == list(LANGUAGES)
    assert [len(received) for received in events_of(result, "client", "received")] == [6 * 5] * 6


@pytest.mark.grid
def test_the_ticker_grid_passes(built):
    results = run_grid(built, "ticker", {"publisher": LANGUAGES, "subscriber": LANGUAGES})
    for result in results:  # each subscriber: 30 ticks of each of its two symbols, 10 of the one it dropped
        assert all(len(ticks) >= 2 * 30 + 10 for ticks in events_of(result, "subscriber", "tick"))


@pytest.mark.grid
def test_the_ticker_grid_through_every_proxy_passes(built):
    results = run_grid(built, "ticker", {"publisher": LANGUAGES, "subscriber": LANGUAGES, "proxy": LANGUAGES})
    for result in results:
        assert [t.role for t in result.transcripts] == ["publisher", "proxy", "subscriber", "subscriber"]


@pytest.mark.grid
def test_the_valuation_grid_and_its_mixed_pools_pass(built):
    results = run_grid(built, "valuation", {"source": LANGUAGES, "worker": LANGUAGES, "sink": LANGUAGES}, extra=True)
    assert len(results) == 216 + 6
    for result in results[216:]:  # a mixed pool: six workers, six languages, each priced some
        [complete] = [e for t in result.transcripts if t.role == "sink" for e in t.events if e["event"] == "complete"]
        assert len(complete["workers"]) == 6 and min(complete["workers"].values()) > 0


@pytest.mark.grid
def test_the_query_grid_and_its_mixed_cells_pass(built):
    results = run_grid(built, "query", {"engine": LANGUAGES, "facade": LANGUAGES}, extra=True)
    assert len(results) == 36 + 6
    for result in results:  # the publisher speaks the engine's language; the late joiner got real state
        assert result.roles["publisher"] == result.roles["engine"]
        late = [t for t in result.transcripts if t.role == "facade" and t.index >= 2]
        assert all(sum(e["keys"] for e in t.events if e["event"] == "synced") > 0 for t in late)
    for result in results[36:]:
        assert [t.lang for t in result.transcripts if t.role == "facade"] == list(LANGUAGES)


@pytest.mark.grid
def test_the_desk_grid_and_its_further_cell_pass(built):
    results = run_grid(built, "desk", {"desk": LANGUAGES, "server": LANGUAGES}, extra=True)
    assert len(results) == 36 + 1
    for result in results:  # every service in the column's language; every agent did its part
        assert result.roles["publisher"] == result.roles["engine"] == result.roles["server"] or result.extra
        [desk] = [t for t in result.transcripts if t.role == "desk"]
        assert {e["agent"] for e in desk.events if e["event"] == "stopped"} == {"chat", "ticker", "valuation", "query"}
    further = results[36]
    assert len({lang for langs in further.roles.values() for lang in langs}) == 6
    chatters = [t for t in further.transcripts if t.role == "client"]
    assert [len([e for e in t.events if e["event"] == "received"]) for t in chatters] == [3 * 5, 3 * 5]
