"""Services that die and come back (examples/README.md, "Restarts"): the orchestrator SIGKILLs a
role that serves until SIGTERM in the middle of a cell and starts it again on the same endpoints;
each example's protocol says what the other roles do, and its checker what may be lost."""
import pytest

from conftest import languages
from orchestrator.checks.ticker import check_subscriber, price
from orchestrator.matrix import evaluate, new_run_dir, replay_command, run_cells
from orchestrator.runner import RoleTranscript
from orchestrator.spec import load_spec


def events(t, name):
    return [e for e in t.events if e["event"] == name]


def runs_of(result, role):
    """The role's first run (killed) and its second (restarted)."""
    found = [t for t in result.transcripts if t.role == role]
    assert [t.restarted for t in found] == [False, True], [t.label for t in found]
    first, second = found
    assert first.killed and first.exit_code == -9 and not events(first, "done")
    assert second.exit_code == 0 and events(second, "done")
    return first, second


@pytest.mark.parametrize("lang", languages("ticker", "proxy"))
def test_a_proxy_that_restarts_costs_each_subscriber_one_reported_gap_per_symbol(built, lang):
    built[lang]
    spec = load_spec("ticker").with_restart("proxy")
    result = evaluate(spec, {"publisher": lang, "proxy": lang, "subscriber": lang}, built.registry, new_run_dir("ticker"))
    assert result.status == "pass", result.problems
    first, second = runs_of(result, "proxy")
    assert first.flags["downstream"] != second.flags["downstream"] == first.events[0]["downstream"]  # the port it got
    subscribers = [t for t in result.transcripts if t.role == "subscriber"]
    gaps = [(t.index, e["symbol"]) for t in subscribers for e in events(t, "gap")]
    assert gaps and len(gaps) == len(set(gaps))  # the ticks in between were lost, and said so: once per symbol
    [publisher] = [t for t in result.transcripts if t.role == "publisher"]
    again = [s for s in {e["symbol"] for e in events(publisher, "subscribed")}
             if [e["symbol"] for e in events(publisher, "subscribed")].count(s) > 1]
    assert again, "the new proxy passed the subscriptions upstream again: the publisher saw a symbol subscribed twice"


@pytest.mark.parametrize("lang", languages("valuation", "sink"))
def test_a_sink_that_restarts_still_gets_the_exact_total(built, lang):
    built[lang]
    spec = load_spec("valuation").with_restart("sink")
    result = evaluate(spec, {"source": lang, "worker": lang, "sink": lang}, built.registry, new_run_dir("valuation"))
    assert result.status == "pass", result.problems  # the checker recomputes the total
    first, second = runs_of(result, "sink")
    counted_first = {e["id"] for e in events(first, "result")}
    assert len(counted_first) >= 300
    [complete] = events(second, "complete")
    assert counted_first <= set(complete["resent"])  # everything the first sink had was asked for again
    assert len(events(second, "worker")) == 2  # both workers said ready again, unasked


@pytest.mark.parametrize("lang", languages("chat", "server"))
def test_a_chat_server_that_restarts_is_rejoined_by_every_client(built, lang):
    built[lang]
    spec = load_spec("chat").with_restart("server")
    result = evaluate(spec, {"server": lang, "client": lang}, built.registry, new_run_dir("chat"))
    assert result.status == "pass", result.problems  # the checker accounts for every post
    first, second = runs_of(result, "server")
    clients = [t for t in result.transcripts if t.role == "client"]
    assert all(len(events(t, "rejoined")) == 1 for t in clients)
    names = {t.flags["name"] for t in clients}
    assert {e["handle"] for e in events(second, "joined")} == names  # each joined the new server itself
    assert events(first, "posted") and events(second, "posted")  # the kill landed mid-posting
    assert {e["handle"] for e in events(second, "posted")} == names


@pytest.mark.parametrize("lang", languages("query", "engine"))
def test_an_engine_that_restarts_is_followed_by_every_facade_to_the_same_map(built, lang):
    built[lang]
    spec = load_spec("query").with_restart("engine")
    result = evaluate(spec, {"publisher": lang, "engine": lang, "facade": lang}, built.registry, new_run_dir("query"))
    assert result.status == "pass", result.problems  # each facade's last session against the new engine's map
    first, second = runs_of(result, "engine")
    assert events(first, "update") and events(second, "update")
    facades = [t for t in result.transcripts if t.role == "facade"]
    assert all(len(events(t, "resynced")) == 1 for t in facades)
    # Each wrote its keys again, to the new engine, which had none of them.
    written = {e["key"] for e in events(second, "update") if e["cause"] == "kvset"}
    assert {f"/facades/{t.flags['name']}/1" for t in facades} <= written


def test_a_restart_is_a_grid_option_with_its_replay(built):
    spec = load_spec("ticker").with_restart("proxy", after=10)
    cells = [{"publisher": "python", "proxy": "python", "subscriber": lang} for lang in ("python", "c")]
    results, _, _ = run_cells(spec, cells, built.registry, 2)
    assert [r.status for r in results] == ["pass", "pass"], [r.problems for r in results]
    assert replay_command(spec, results[1].roles).endswith("--restart proxy --after 10")
    assert spec.title() == "ticker, proxy restarted"


def test_only_a_role_the_spec_names_can_be_restarted():
    with pytest.raises(ValueError, match="restarts sink, not 'worker'"):
        load_spec("valuation").with_restart("worker")
    with pytest.raises(ValueError, match="restarts none"):
        load_spec("desk").with_restart("desk")


def test_without_the_restart_a_gap_fails_the_cell():
    """The ticker checker accepts a gap only across a restart: the same events without one fail."""
    t = RoleTranscript("subscriber", 0, "python", {"seed": 1, "count": 1, "symbols": "IBM"}, [])
    t.events = [{"event": "tick", "symbol": "IBM", "sequence": 1, "price": price(1, "IBM", 1), "timestamp": 1000},
                {"event": "gap", "symbol": "IBM", "after": 1, "next": 5},
                {"event": "tick", "symbol": "IBM", "sequence": 5, "price": price(1, "IBM", 5), "timestamp": 2000}]
    assert "nothing was restarted" in check_subscriber(t, None)[0]
    # Published before the kill (1.5 s), and after the second proxy started (1.8 s): it straddles.
    assert check_subscriber(t, None, restart=(1.5, 1.8)) == []
    assert "does not straddle" in check_subscriber(t, None, restart=(0.5, 0.8))[0]  # both after the restart
    assert "does not straddle" in check_subscriber(t, None, restart=(2.5, 2.8))[0]  # both before it
    t.events[1] = {**t.events[1], "next": 4}
    assert "not reported as one" in check_subscriber(t, None, restart=(1.5, 1.8))[0]


def test_a_restart_may_wait_for_every_instance_of_a_role():
    """query's engine dies only once every facade, late ones too, follows it (`every: true`)."""
    fault = load_spec("query").with_restart("engine").fault
    assert (fault.watched, fault.event, fault.count, fault.every) == ("facade", "wrote", 1, True)
    assert fault.describe() == "killed with SIGKILL after every facade's 1th wrote event, then started again"
    assert not load_spec("chat").with_restart("server").fault.every
