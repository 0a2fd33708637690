"""The integration tests: every grid, every language against every other, through the orchestrator.

Each cell is a test of its own (`pytest -k "chat and rust and vb"` runs one, and pytest's JUnit
report lists every cell). The selected cells of a grid run together, PARALLEL at a time, when the
first of them is reached; each test then checks its own cell."""
import pytest

from conftest import LANGS
from orchestrator.matrix import evaluate, grid_cells, mixed_cells, new_run_dir, relative, replay_command, run_cells
from orchestrator.spec import load_spec

PARALLEL = 3
# name -> (example, dimensions, with the spec's mixed and further cells)
TCP = {
    "chat": ("chat", {"server": LANGS, "client": LANGS}, False),
    "ticker": ("ticker", {"publisher": LANGS, "subscriber": LANGS}, False),
    "ticker-proxy": ("ticker", {"publisher": LANGS, "subscriber": LANGS, "proxy": LANGS}, False),
    "valuation": ("valuation", {"source": LANGS, "worker": LANGS, "sink": LANGS}, True),
    "query": ("query", {"engine": LANGS, "facade": LANGS}, True),
    "desk": ("desk", {"desk": LANGS, "server": LANGS}, True),
}
# The same grids over ipc, every role monitored (--transport ipc --monitor): a NetMQ end with a
# libzmq end is unsupported there, and the contract's socket-events are checked in every cell.
# (ticker-proxy, 216 cells, only over tcp: `invoke matrix ticker --proxy all --transport ipc` runs it.)
IPC = {f"{name}-ipc": grid for name, grid in TCP.items() if name != "ticker-proxy"}
GRIDS = {**TCP, **IPC}


def cells_of(grid):
    example, dimensions, extra = GRIDS[grid]
    spec = load_spec(example)
    if grid in IPC:
        spec = spec.with_transport("ipc", monitor=True)
    extra_cells = mixed_cells(spec, dimensions) if extra else []
    return spec, grid_cells(dimensions, extra_cells), len(grid_cells(dimensions))


def cell_name(cell):
    return " ".join(f"{role}-{lang if isinstance(lang, str) else '+'.join(lang)}" for role, lang in cell.items())


def cell_languages(cell):
    return sorted({lang for value in cell.values() for lang in ([value] if isinstance(value, str) else value)})


PARAMS = [pytest.param(grid, index, id=f"{grid} {cell_name(cell)}", marks=pytest.mark.languages(*cell_languages(cell)))
          for grid in GRIDS for index, cell in enumerate(cells_of(grid)[1])]


class Grids:
    """The results of the selected cells, grid by grid: a grid's selected cells run together the
    first time one of them is asked for."""

    def __init__(self, registry, items):
        self.registry, self.items, self.done = registry, items, {}

    def result(self, grid, index):
        if grid not in self.done:
            spec, cells, extra_from = cells_of(grid)
            wanted = [item.callspec.params["index"] for item in self.items
                      if hasattr(item, "callspec") and item.callspec.params.get("grid") == grid]
            results, _, run_dir = run_cells(spec, [cells[i] for i in wanted], self.registry, PARALLEL)
            for i, result in zip(wanted, results):
                result.extra = i >= extra_from
            self.done[grid] = dict(zip(wanted, results)), spec, run_dir
        results, spec, run_dir = self.done[grid]
        result = results[index]
        if result.status == "unsupported":  # a language of the cell does not implement its role
            pytest.skip(result.detail)
        assert result.status == "pass", (f"{result.status}: {result.detail}\nreplay: {replay_command(spec, result.roles)}"
                                         f"\nlogs in {relative(run_dir)}")
        return result


@pytest.fixture(scope="session")
def grids(built, request):
    for lang in LANGS:
        built[lang]  # build before any clock starts
    return Grids(built.registry, request.session.items)


def events_of(result, role, name):
    return [[e for e in t.events if e["event"] == name] for t in result.transcripts if t.role == role]


def check_chat(result):  # three clients that each saw the 15 posts
    assert [len(received) for received in events_of(result, "client", "received")] == [15, 15, 15]


def check_ticker(result):  # each subscriber: 30 ticks of each of its two symbols, 10 of the one it dropped
    assert all(len(ticks) >= 2 * 30 + 10 for ticks in events_of(result, "subscriber", "tick"))


def check_ticker_proxy(result):
    check_ticker(result)
    assert [t.role for t in result.transcripts] == ["publisher", "proxy", "subscriber", "subscriber"]


def check_valuation(result):
    if result.extra:  # a mixed pool: a worker in every language, each priced some
        [complete] = [e for t in result.transcripts if t.role == "sink" for e in t.events if e["event"] == "complete"]
        assert len(complete["workers"]) == len(LANGS) and min(complete["workers"].values()) > 0


def check_query(result):  # the publisher speaks the engine's language; the late joiner got real state
    assert result.roles["publisher"] == result.roles["engine"]
    late = [t for t in result.transcripts if t.role == "facade" and t.index >= 2]
    assert all(sum(e["keys"] for e in t.events if e["event"] == "synced") > 0 for t in late)
    if result.extra:
        assert [t.lang for t in result.transcripts if t.role == "facade"] == list(LANGS)


def check_desk(result):  # every service in the column's language (but the further cell); every agent did its part
    assert result.roles["publisher"] == result.roles["engine"] == result.roles["server"] or result.extra
    [desk] = [t for t in result.transcripts if t.role == "desk"]
    assert {e["agent"] for e in desk.events if e["event"] == "stopped"} == {"chat", "ticker", "valuation", "query"}
    if result.extra:  # the further cell: every service in another language, two more traders
        assert len({lang for langs in result.roles.values() for lang in langs}) == len(LANGS)
        chatters = [t for t in result.transcripts if t.role == "client"]
        assert [len([e for e in t.events if e["event"] == "received"]) for t in chatters] == [3 * 5, 3 * 5]


CHECKS = {"chat": check_chat, "ticker": check_ticker, "ticker-proxy": check_ticker_proxy, "valuation": check_valuation,
          "query": check_query, "desk": check_desk}


@pytest.mark.grid
@pytest.mark.parametrize("grid, index", PARAMS)
def test_the_grid_cell_passes(grids, grid, index, record_property):
    result = grids.result(grid, index)
    record_property("cell_seconds", round(result.seconds, 2))  # the cell's own time, in pytest's JUnit report
    CHECKS[grid.removesuffix("-ipc")](result)


def test_the_grids_have_the_cells_the_registry_gives():
    n = len(LANGS)
    assert [len(cells_of(grid)[1]) for grid in TCP] == [n * n, n * n, n ** 3, n ** 3 + n, n * n + n, n * n + 1]
    assert [len(cells_of(grid)[1]) for grid in IPC] == [n * n, n * n, n ** 3 + n, n * n + n, n * n + 1]


@pytest.mark.grid
def test_one_chat_cell_can_mix_every_client_language(built):
    result = evaluate(load_spec("chat"), {"server": "c", "client": list(LANGS)}, built.registry, new_run_dir("chat"))
    assert result.status == "pass", result.problems
    assert [t.lang for t in result.transcripts if t.role == "client"] == list(LANGS)
    assert [len(received) for received in events_of(result, "client", "received")] == [len(LANGS) * 5] * len(LANGS)
