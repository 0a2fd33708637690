"""Spec loading, and errors that name the file and the field."""
import re

import pytest
import yaml

from orchestrator.config import ConfigError
from orchestrator.spec import instance_values, load_spec, render

GOOD = {
    "example": "chat",
    "parameters": {"messages": 2},
    "roles": {
        "server": {"wait_for": "ready", "stop": "signal", "flags": {"requests": "tcp://127.0.0.1:*"}},
        "client": {"instances": 2, "each": [{"name": "a"}, {"name": "b"}], "flags": {"requests": "{server.requests}", "name": "{name}", "count": "{messages}"}},
    },
    "matrix": ["server", "client"],
    "timeouts": {"cell": 30},
}


def write(tmp_path, data):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False) if not isinstance(data, str) else data)
    return path


def broken(**changes):
    data = yaml.safe_load(yaml.safe_dump(GOOD, sort_keys=False))
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = data
        for key in parents:
            target = target[key]
        if value is DELETE:
            del target[last]
        else:
            target[last] = value
    return data


DELETE = object()


def test_the_chat_spec_loads():
    spec = load_spec("chat")
    assert spec.role_names() == ["server", "client"]
    assert spec.matrix == ["server", "client"]
    assert spec.role("client").instances == 3
    assert spec.role("server").stop == "signal"
    assert spec.cell_timeout > 0


def test_a_good_spec_renders_its_flags(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    client = spec.role("client")
    context = spec.context(client, 1, {"server": {"requests": "tcp://127.0.0.1:4000"}})
    flags = {name: render(value, context) for name, value in client.flags.items()}
    assert flags == {"requests": "tcp://127.0.0.1:4000", "name": "b", "count": 2}


def test_each_names_any_number_of_instances(tmp_path):
    """`each` is taken round and round; from the second round on a name gets the round's number."""
    spec = load_spec(write(tmp_path, GOOD)).for_cell({"client": 5}, {"server", "client"})
    client = spec.role("client")
    names = [render(client.flags["name"], spec.context(client, index, {"server": {"requests": "tcp://x:1"}}))
             for index in range(client.instances)]
    assert names == ["a", "b", "a2", "b2", "a3"]
    chat = load_spec("chat").for_cell({"client": 13}, {"server", "client"})
    names = [instance_values(chat.role("client").each, index)["name"] for index in range(13)]
    assert names[:3] == ["alice", "bob", "chloé"] and names[6:8] == ["alice2", "bob2"] and names[12] == "alice3"
    assert len(set(names)) == 13


@pytest.mark.parametrize(
    "data, field, words",
    [
        (broken(roles=DELETE), "roles", "is required"),
        (broken(roles__client__instances="three"), "roles.client.instances", "must be a int"),
        (broken(roles__client__instances=0), "roles.client.instances", "at least 1"),
        (broken(roles__client__each=[{"name": "a"}, {"nick": "b"}]), "roles.client.each[1]", "must have the keys ['name']"),
        (broken(roles__client__each=["a", "b"]), "roles.client.each", "list of mappings"),
        (broken(roles__server__optional=True), "matrix", "every role that is not optional"),
        (broken(roles__client__colour="red"), "roles.client.colour", "unknown field"),
        (broken(roles__client__flags__name="{nobody}"), "roles.client.flags.name", "{nobody} names nothing"),
        (broken(roles__server__stop="later"), "roles.server.stop", "'exit' or 'signal'"),
        (broken(matrix=["server"]), "matrix", "two roles"),
        (broken(matrix=["server", "proxy"]), "matrix", "'proxy' is not a role"),
        (broken(timeouts__cell=-1), "timeouts.cell", "positive"),
        (broken(roles__client__flags__count=[1, 2]), "roles.client.flags.count", "string or a number"),
        (broken(example=7), "example", "must be a str"),
        (broken(security={"mechanisms": [None, "curve"], "server": "server", "intruder": {"role": "client"}}), "security.mechanisms", 'quote "null"'),
        (broken(security={"mechanisms": ["curve"], "server": "hub", "intruder": {"role": "client"}}), "security.server", "'hub' is not a role"),
        (broken(security={"mechanisms": ["curve"], "server": "server"}), "security.intruder", "is required"),
    ],
)
def test_malformed_specs_name_the_file_and_the_field(tmp_path, data, field, words):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as raised:
        load_spec(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: {field}: "), message
    assert words in message


def test_a_flag_may_not_use_a_role_that_starts_later(tmp_path):
    data = broken(roles__server__flags__peer="{client.requests}")
    with pytest.raises(ConfigError, match="roles.server.flags.peer"):
        load_spec(write(tmp_path, data))


def test_yaml_syntax_errors_name_the_file(tmp_path):
    path = write(tmp_path, "roles: [unclosed\n")
    with pytest.raises(ConfigError, match=f"^{path}: not valid YAML"):
        load_spec(path)


def test_an_unknown_example_lists_the_known_ones():
    with pytest.raises(ConfigError, match="no such example .*chat"):
        load_spec("karaoke")


def test_optional_roles_and_alternatives(tmp_path):
    data = broken()
    data["roles"] = {
        "publisher": {"wait_for": "ready", "stop": "signal", "flags": {"ticks": "tcp://127.0.0.1:*"}},
        "proxy": {"optional": True, "wait_for": "ready", "stop": "signal", "flags": {"upstream": "{publisher.ticks}"}},
        "subscriber": {"flags": {"ticks": "{proxy.downstream|publisher.ticks}"}},
    }
    data["matrix"] = ["publisher", "subscriber"]
    spec = load_spec(write(tmp_path, data))
    assert spec.optional_roles() == ["proxy"]
    direct = spec.for_cell({}, {"publisher", "subscriber"})
    assert direct.role_names() == ["publisher", "subscriber"]
    subscriber = direct.role("subscriber")
    ready = {"publisher": {"ticks": "tcp://127.0.0.1:1"}}
    assert render(subscriber.flags["ticks"], direct.context(subscriber, 0, ready)) == "tcp://127.0.0.1:1"
    ready["proxy"] = {"downstream": "tcp://127.0.0.1:2"}
    proxied = spec.for_cell({}, {"publisher", "proxy", "subscriber"})
    assert proxied.role_names() == ["publisher", "proxy", "subscriber"]
    assert render(subscriber.flags["ticks"], proxied.context(subscriber, 0, ready)) == "tcp://127.0.0.1:2"


def test_the_query_spec_borrows_the_ticker_publisher_in_the_engine_language():
    from orchestrator.matrix import assign

    spec = load_spec("query")
    publisher = spec.role("publisher")
    assert (publisher.program_example("query"), publisher.program_role) == ("ticker", "publisher")
    assert spec.programs({"publisher": {"c"}, "engine": {"c"}}) == {("ticker", "publisher"): {"c"}, ("query", "engine"): {"c"}}
    _, roles = assign(spec, {"engine": "rust", "facade": "vb"})
    assert roles == {"publisher": ["rust"], "engine": ["rust"], "facade": ["vb"] * 3}
    _, roles = assign(spec, {"engine": "rust", "facade": "vb", "publisher": "c"})
    assert roles["publisher"] == ["c"]
    late = spec.role("facade")
    assert [render(late.start_after["count"], spec.context(late, index, {})) for index in range(3)] == [0, 0, 400]


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"roles__client__start_after": {"role": "nobody", "event": "ready"}}, "'nobody' is not a role started before this one"),
        ({"roles__client__start_after": {"role": "server", "event": "ready", "count": "{nothing}"}}, "{nothing} names nothing known"),
        ({"roles__client__language_of": "nobody"}, "'nobody' is not a role of this example"),
        ({"roles__client__program": "ticker"}, "must be 'EXAMPLE ROLE'"),
    ],
)
def test_late_joiners_and_borrowed_roles_are_checked(tmp_path, changes, words):
    with pytest.raises(ConfigError, match=".*" + words.replace("{", "\\{").replace("}", "\\}").replace("(", "\\(")):
        load_spec(write(tmp_path, broken(**changes)))


def test_the_desk_spec_counts_its_chat_participants_and_names_a_further_cell():
    """{instances.client+1}: the desk and its optional chat clients; 0 clients when left out."""
    from orchestrator.matrix import assign, mixed_cells

    spec = load_spec("desk")
    alone, roles = assign(spec, {"desk": "c", "server": "rust"})
    assert roles == {"server": ["rust"], "publisher": ["rust"], "engine": ["rust"], "desk": ["c"], "worker": ["rust"] * 2}
    desk = alone.role("desk")
    assert render(desk.flags["chat-clients"], alone.context(desk, 0, {})) == 1
    [further] = mixed_cells(spec, {"desk": ["python", "c", "rust", "csharp", "fsharp", "vb"], "server": ["python", "c"]})
    crowded, roles = assign(spec, further)
    assert roles["client"] == ["python", "rust"] and len({lang for langs in roles.values() for lang in langs}) == 6
    assert render(desk.flags["chat-clients"], crowded.context(desk, 0, {})) == 3
    assert mixed_cells(spec, {"desk": ["c"], "server": ["c"]}) == []  # a grid without its languages skips it


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"further": [{"server": "c"}]}, "must give every dimension of the grid a language (client)"),
        ({"further": [{"server": "c", "client": "c", "nobody": "c"}]}, "is not a role of this example"),
        ({"further": [{"server": "c", "client": [1]}]}, "must be a language or a list of languages"),
        ({"roles__client__flags__count": "{nothing+1}"}, "{nothing} names nothing known"),
    ],
)
def test_further_cells_and_sums_are_checked(tmp_path, changes, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_spec(write(tmp_path, broken(**changes)))


def test_a_sum_needs_a_number():
    assert render("{a+2}", {"a": 3}) == 5 and render("n={a+2}", {"a": 3}) == "n=5"
    with pytest.raises(KeyError, match="not a number"):
        render("{a+2}", {"a": "x"})
