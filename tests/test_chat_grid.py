"""The integration test: the full chat grid, every server language against every client language."""
import pytest

from orchestrator import LANGUAGES
from orchestrator.matrix import evaluate, new_run_dir, run_matrix
from orchestrator.spec import load_spec


@pytest.mark.grid
def test_the_full_chat_grid_passes(built):
    for lang in LANGUAGES:
        built[lang]  # build before the clock starts
    spec = load_spec("chat")
    results, wall, run_dir = run_matrix(spec, {"server": LANGUAGES, "client": LANGUAGES}, built.registry, parallel=3)
    assert len(results) == 36
    failures = [f"{r.roles}: {r.status}: {r.detail}" for r in results if r.status != "pass"]
    assert not failures, f"{len(failures)} of 36 cells did not pass (logs in {run_dir}):\n" + "\n".join(failures)
    # Every cell really ran: a server and three clients, each of which saw the 15 posts.
    for result in results:
        clients = [t for t in result.transcripts if t.role == "client"]
        assert len(clients) == 3
        assert all(sum(e["event"] == "received" for e in t.events) == 15 for t in clients)


@pytest.mark.grid
def test_one_cell_can_mix_every_client_language(built):
    spec = load_spec("chat")
    result = evaluate(spec, {"server": "c", "client": list(LANGUAGES)}, built.registry, new_run_dir("chat"))
    assert result.status == "pass", result.problems
    clients = [t for t in result.transcripts if t.role == "client"]
    assert [t.lang for t in clients] == list(LANGUAGES)
    assert all(sum(e["event"] == "received" for e in t.events) == 6 * 5 for t in clients)
