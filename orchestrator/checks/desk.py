"""Checks one desk cell (examples/desk/PROTOCOL.md, "What the orchestrator checks"): the desk's
events are split by agent, each agent's part is checked by its own example's checker as if the
agent were that example's role, then the desk's own rules (start-up and shut-down order)."""
from dataclasses import dataclass, replace

from . import chat, query, ticker, valuation
from ..runner import RoleTranscript

AGENTS = ("chat", "ticker", "valuation", "query")


@dataclass
class AgentView(RoleTranscript):
    """One agent of a desk, seen as the role of its example (`role`) by that example's checker."""

    shown_as: str = None
    texts: list = None  # the chat agent's: what it was asked to post (checks/chat.py)

    @property
    def label(self):
        return self.shown_as


def check(spec, transcripts):
    problems = []
    desks = [t for t in transcripts if t.role == "desk"]
    for desk in desks:
        problems += check_order(desk)
    if problems:
        return problems  # an agent that never started or stopped makes the rest meaningless
    for desk in desks:
        views = agent_views(desk)
        others = [t for t in transcripts if t.role != "desk"]
        problems += chat.check(spec, others + views["chat"])
        problems += check_ticker(desk, views["ticker"], ticker.run_window(transcripts))
        problems += valuation.check(spec, others + views["valuation"])
        problems += query.check(spec, others + views["query"])
        problems += check_write(desk)
    return problems


def of(desk, agent):
    return [event for event in desk.events if event.get("agent") == agent]


def view(desk, agent, role, flags, evs, texts=None):
    return AgentView(role, 0, desk.lang, flags, desk.argv, evs, desk.exit_code, started_at=desk.started_at,
                     ended_at=desk.ended_at, shown_as=f"{desk.label} {agent} agent", texts=texts)


def page_commands(desk, command):
    """The commands the desk's page gave it, as the desk reported them (`command` events)."""
    return [e for e in desk.events if e["event"] == "command" and "agent" not in e and e.get("command") == command]


def trade_size(desk):
    """The trade the desk valued: --trade, or the page's (one trade a cell: the workers leave after it)."""
    values = page_commands(desk, "VALUE")
    return int(desk.flags["trade"]) or (int(values[-1].get("orders", 0)) if values else 0)


def agent_views(desk):
    """Each agent's events, as the transcripts its example's checker expects."""
    flags = desk.flags
    stopped = {agent: (events_of[-1] if events_of and events_of[-1]["event"] == "stopped" else {})
               for agent in AGENTS for events_of in [of(desk, agent)]}
    val = of(desk, "valuation")
    return {
        "chat": [view(desk, "chat", "client", {"name": flags["name"], "count": flags["posts"]}, of(desk, "chat"),
                      texts=[chat.post_text(flags["name"], i + 1) for i in range(int(flags["posts"]))]
                      + [e.get("text") for e in page_commands(desk, "POST")])],
        "ticker": [view(desk, "ticker", "subscriber", {"seed": flags["seed"], "count": flags["tick-count"], "symbols": flags["follow"]},
                        of(desk, "ticker"))],
        "valuation": [view(desk, "valuation", "sink", {"count": trade_size(desk)}, val),
                      view(desk, "valuation", "source", {"seed": flags["seed"]}, [e for e in val if e["event"] == "resent"])],
        # The facade's `done` is the query agent's `stopped`: its map at its last applied sequence.
        "query": [view(desk, "query", "facade", {"name": flags["name"], "subtrees": flags["subtrees"]},
                       [e for e in of(desk, "query") if e["event"] != "stopped"] + [{**stopped["query"], "event": "done"}])],
    }


def check_order(desk):
    """The desk's own rules: each agent's first event is ready and its last stopped; the desk's
    ready after the four agents' readies, its done after the four stoppeds, naming all four."""
    problems = []
    own = [(i, e) for i, e in enumerate(desk.events) if "agent" not in e]
    ready = next((i for i, e in own if e["event"] == "ready"), None)
    done = next((e for _, e in own if e["event"] == "done"), None)
    if done is None:
        return problems  # the contract's checks say why
    if done.get("complete") is not True:
        problems.append(f"{desk.label}: done says complete {done.get('complete')!r}: the scenario did not finish")
    if done.get("agents") != list(AGENTS):
        problems.append(f"{desk.label}: done names the agents {done.get('agents')!r}, not {list(AGENTS)}")
    for agent in AGENTS:
        mine = [(i, e) for i, e in enumerate(desk.events) if e.get("agent") == agent]
        if not mine or mine[0][1]["event"] != "ready":
            problems.append(f"{desk.label}: the {agent} agent's first event is {mine[0][1]['event'] if mine else 'missing'}, not ready")
            continue
        if mine[-1][1]["event"] != "stopped":
            problems.append(f"{desk.label}: the {agent} agent's last event is {mine[-1][1]['event']}, not stopped")
        if sum(1 for _, e in mine if e["event"] == "stopped") != 1:
            problems.append(f"{desk.label}: the {agent} agent reported stopped more than once")
        if ready is not None and mine[0][0] > ready:
            problems.append(f"{desk.label}: the desk was ready before its {agent} agent")
        if mine[-1][0] > desk.events.index(done):
            problems.append(f"{desk.label}: done before the {agent} agent stopped")
    return problems


def check_ticker(desk, views, window):
    """The ticker agent as a subscriber that starts with no symbol (each FOLLOW is a `subscribed`),
    plus the forget: once, after at least --forget-after of its ticks, and nothing of it after."""
    [agent] = views
    problems = ticker.check_subscriber(agent, window, subscribed=())
    forget = str(desk.flags.get("forget") or "")
    if forget:
        at = next((i for i, e in enumerate(agent.events) if e["event"] == "unsubscribed" and e.get("symbol") == forget), None)
        if at is None:
            problems.append(f"{agent.label}: never forgot {forget}")
        else:
            before = sum(1 for e in agent.events[:at] if e["event"] == "tick" and e.get("symbol") == forget)
            if before < int(desk.flags["forget-after"]):
                problems.append(f"{agent.label}: forgot {forget} after {before} of its ticks, not {desk.flags['forget-after']}")
    return problems


def check_write(desk):
    """The trade's total went to the engine as /desks/NAME/valuation and came back."""
    complete = [e for e in of(desk, "valuation") if e["event"] == "complete"]
    if not complete or not trade_size(desk):
        return []
    key = f"/desks/{desk.flags['name']}/valuation"
    value = str(complete[0].get("total")).encode().hex()
    problems = []
    for name in ("wrote", "read-back"):
        found = [e for e in of(desk, "query") if e["event"] == name and e.get("key") == key]
        if [e.get("value") for e in found] != [value]:
            problems.append(f"{desk.label}: query agent {name} {[(e.get('key'), e.get('value')) for e in found]}, "
                            f"expected {key} = {value} (the total {complete[0].get('total')}) once")
    return problems
