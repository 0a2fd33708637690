"""Example specs (examples/<name>/spec.yaml): roles, instance counts, flags, parameters, timeouts."""
import re
from dataclasses import dataclass, replace
from pathlib import Path

from . import ROOT
from .config import ConfigError, Fields, load_yaml
from .security import INTRUDER, MECHANISMS, REFUSALS, CellSecurity, SecuritySpec
from .transport import TRANSPORTS

EXAMPLES_DIR = ROOT / "examples"
PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.|-]*?)(?:\+(\d+))?\}")


@dataclass
class RoleSpec:
    name: str
    instances: int
    flags: dict
    each: list  # mappings whose keys flags may use ({name}, {symbols}...): instance_values() says whose
    wait_for: str  # event every instance must report before the next role starts, or None
    stop: str  # "exit": finishes by itself; "signal": SIGTERM once every "exit" role has exited
    optional: bool  # a cell may leave it out (the ticker's proxy)
    plays: str = None  # the role of the launch contract it runs, when not its own name (an intruder)
    program: tuple = None  # (example, role) of another example that it runs (query: ticker publisher)
    language_of: str = None  # runs in the language of this other role, unless a cell says otherwise
    start_after: dict = None  # {role, event, count}: start each instance once that role's instance 0
    # has reported `count` such events (count may be a flag template: a late joiner)

    @property
    def program_role(self):
        return self.program[1] if self.program else (self.plays or self.name)

    def program_example(self, example):
        return self.program[0] if self.program else example


@dataclass
class Spec:
    example: str
    path: Path
    description: str
    parameters: dict
    roles: list
    matrix: list  # the roles that always make the grid's dimensions; optional roles may join them
    cell_timeout: float  # seconds
    mixed: dict = None  # {"role": R, "per": P}: one more cell per language of P, R in every language
    security: SecuritySpec = None  # what `security:` allows; None: NULL only
    secure: CellSecurity = None  # the mechanism (and refusal case) these cells run under
    further: list = None  # fixed extra cells, role -> language or list (desk: every service in another language)
    left_out: tuple = ()  # optional roles this cell leaves out: {instances.ROLE} is 0 for them
    transport: str = "tcp"  # of every endpoint the cell hands out: tcp or ipc (orchestrator/transport.py)
    monitor: bool = False  # every role reports its sockets' events (--monitor on)
    tcp_only: tuple = ()  # flags that stay tcp over any transport (the desk page's http: a browser speaks TCP)
    restarts: dict = None  # role -> {event, count, by}: when `--restart ROLE` kills it (the spec's `restart:`)
    fault: object = None  # the cell's runner.Fault, when it restarts a role (with_restart)

    def title(self):
        """The example's name, and the security, transport and monitoring of its cells when not the
        defaults."""
        parts = [self.example]
        if self.secure:
            parts.append(self.secure.label(self.security.intruder_role))
        if self.transport != "tcp":
            parts.append(f"over {self.transport}")
        if self.monitor:
            parts.append("monitored")
        if self.fault:
            parts.append(f"{self.fault.role} restarted")
        return ", ".join(parts)

    def with_restart(self, role, after=None):
        """The spec of cells whose `role` is SIGKILLed and started again once the spec's `restart:`
        event (or `after` of them) has been reported (examples/README.md, "Restarts")."""
        from .runner import Fault  # the runner imports this module

        if role not in (self.restarts or {}):
            can = ", ".join(self.restarts or {}) or "none"
            raise ValueError(f"{self.example} restarts {can}, not {role!r} (its spec.yaml's restart:)")
        rule = self.restarts[role]
        spec = self.with_parameters(**rule["parameters"])  # a slower batch, so that the kill lands mid-run
        return replace(spec, fault=Fault(role, rule["event"], after or rule["count"], rule["by"], restart=True, every=rule["every"]))

    def with_transport(self, transport, monitor=False):
        """The spec of cells over `transport` (tcp, ipc), with every role's monitor on or off."""
        if transport not in TRANSPORTS:
            raise ValueError(f"transports: {', '.join(TRANSPORTS)}, not {transport!r}")
        return replace(self, transport=transport, monitor=monitor)

    def with_security(self, mechanism, refusal=None):
        """The spec of cells under `mechanism`; a refusal case adds the intruder role, a copy of
        the spec's intruder role with its flags changed, started right after the server."""
        allowed = self.security.mechanisms if self.security else ("null",)
        if mechanism not in allowed:
            raise ValueError(f"{self.example} runs under {', '.join(allowed)}, not {mechanism!r} (see its spec.yaml)")
        if mechanism == "null" and not refusal:
            return self
        roles = list(self.roles)
        if refusal:
            if REFUSALS.get(refusal, (None,))[0] != mechanism:
                cases = [case for case, (mech, _) in REFUSALS.items() if mech == mechanism]
                raise ValueError(f"refusal cases under {mechanism}: {', '.join(cases) or 'none'}, not {refusal!r}")
            base = self.role(self.security.intruder_role)
            intruder = RoleSpec(INTRUDER, 1, {**base.flags, **self.security.intruder_flags}, [], None, "exit", False, base.name)
            roles.insert(self.role_names().index(self.security.server) + 1, intruder)
        secure = CellSecurity(mechanism, refusal, self.security.server)
        return replace(self, roles=roles, secure=secure)

    def intruder_of(self):
        """The role whose language the intruder takes when none is given: the grid's column."""
        return self.security.intruder_role if self.secure and self.secure.refusal else None

    def role(self, name):
        for role in self.roles:
            if role.name == name:
                return role
        raise KeyError(f"{self.example} has no role {name!r} (roles: {', '.join(self.role_names())})")

    def role_names(self):
        return [role.name for role in self.roles]

    def programs(self, playing):
        """{(example, role of the launch contract): languages} for {role of this spec: languages}."""
        found = {}
        for name, langs in playing.items():
            role = self.role(name)
            found.setdefault((role.program_example(self.example), role.program_role), set()).update(langs)
        return found

    def with_parameters(self, **changes):
        return replace(self, parameters={**self.parameters, **changes})

    def for_cell(self, counts, present):
        """A copy for one cell: some roles run another number of instances (invoke run --client a
        --client b), and optional roles not in `present` are left out."""
        roles, left_out = [], []
        for role in self.roles:
            if role.optional and role.name not in present:
                left_out.append(role.name)
                continue
            roles.append(replace(role, instances=counts.get(role.name, role.instances)))
        return replace(self, roles=roles, left_out=tuple(left_out))

    def optional_roles(self):
        return [role.name for role in self.roles if role.optional]

    def context(self, role, index, ready, lang=None):
        """What a role instance's flag templates may refer to."""
        values = dict(self.parameters)
        values["instances"] = {**{name: 0 for name in self.left_out}, **{r.name: r.instances for r in self.roles}}
        values["index"] = index
        values["lang"] = lang
        if role.each:  # an instance's own values may refer to parameters: {late}
            values.update({key: render(value, values) for key, value in instance_values(role.each, index).items()})
        values.update(ready)  # {"server": {the server's ready event}}
        return values


def instance_values(each, index):
    """The `each` values of instance `index`, for any number of instances: the list is taken round
    and round, and from the second round on a `name` gets the round's number (alice, ..., zoë,
    alice2, ..., zoë2, alice3...), so names stay distinct and the non-ASCII ones stay in."""
    values = dict(each[index % len(each)])
    rounds = index // len(each)
    if rounds and "name" in values:
        values["name"] = f"{values['name']}{rounds + 1}"
    return values


MISSING = object()


def render(template, context):
    """Fill {dotted.names} in one flag value; {a.b|c.d} takes the first that exists (the proxy's
    endpoint when a cell has a proxy, the publisher's otherwise); {a.b+1} adds a number to an
    integer (the desk and its chat clients: one more than the clients). A value that is a single
    placeholder keeps its type."""
    if not isinstance(template, str):
        return template

    def lookup(alternatives):
        for path in alternatives.split("|"):
            value = context
            for part in path.split("."):
                value = value.get(part, MISSING) if isinstance(value, dict) else MISSING
            if value is not MISSING:
                return value
        raise KeyError(alternatives)

    def value(match):
        found = lookup(match.group(1))
        if match.group(2) is None:
            return found
        if not isinstance(found, int):
            raise KeyError(f"{match.group(1)} is {found!r}, not a number to add {match.group(2)} to")
        return found + int(match.group(2))

    whole = PLACEHOLDER.fullmatch(template)
    if whole:
        return value(whole)
    return PLACEHOLDER.sub(lambda match: str(value(match)), template)


def spec_path(example):
    return EXAMPLES_DIR / example / "spec.yaml"


def available_examples():
    return sorted(path.parent.name for path in EXAMPLES_DIR.glob("*/spec.yaml"))


def load_spec(example_or_path):
    path = Path(example_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = spec_path(example_or_path)
        if not path.exists():
            raise ConfigError(path, "", f"no such example (examples: {', '.join(available_examples())})")
    top = Fields(path, load_yaml(path))
    top.only("example", "description", "parameters", "roles", "matrix", "timeouts", "mixed", "further", "security", "tcp_only",
             "restart")
    example = top.get("example", str, required=True)
    parameters = top.get("parameters", dict, {})
    roles_data = top.get("roles", dict, required=True)
    if not roles_data:
        raise top.error("roles", "must name at least one role")

    roles = []
    known = set(parameters) | {"instances", "index", "lang"}
    for name, data in roles_data.items():
        if not isinstance(data, dict):
            raise ConfigError(path, f"roles.{name}", "must be a mapping")
        fields = Fields(path, data, f"roles.{name}")
        fields.only("instances", "flags", "each", "wait_for", "stop", "optional", "program", "language_of", "start_after")
        instances = fields.get("instances", int, 1)
        if instances < 1:
            raise fields.error("instances", f"must be at least 1, not {instances}")
        each = fields.get("each", list, [])
        if not all(isinstance(item, dict) and item for item in each):
            raise fields.error("each", "must be a list of mappings, one per instance")
        keys = set(each[0]) if each else set()
        for index, item in enumerate(each):
            if set(item) != keys:
                raise ConfigError(path, f"roles.{name}.each[{index}]", f"must have the keys {sorted(keys)}")
        flags = fields.get("flags", dict, {})
        visible = known | keys
        for flag, value in flags.items():
            if isinstance(value, (dict, list)) or value is None:
                raise ConfigError(path, f"roles.{name}.flags.{flag}", "must be a string or a number")
            for ref, _ in PLACEHOLDER.findall(str(value)):
                if not any(alternative.split(".")[0] in visible for alternative in ref.split("|")):
                    raise ConfigError(
                        path,
                        f"roles.{name}.flags.{flag}",
                        f"{{{ref}}} names nothing known here (known: {', '.join(sorted(visible))})",
                    )
        stop = fields.get("stop", str, "exit")
        if stop not in ("exit", "signal"):
            raise fields.error("stop", f"must be 'exit' or 'signal', not {stop!r}")
        wait_for = fields.get("wait_for", str)
        program = fields.get("program", str)
        if program is not None and len(program.split()) != 2:
            raise fields.error("program", f"must be 'EXAMPLE ROLE' (ticker publisher), not {program!r}")
        language_of = fields.get("language_of", str)
        if language_of is not None and language_of not in roles_data:
            raise fields.error("language_of", f"{language_of!r} is not a role of this example")
        start_after = None
        if "start_after" in data:
            after = fields.child("start_after")
            after.only("role", "event", "count")
            start_after = {key: after.get(key, str, required=True) for key in ("role", "event")}
            start_after["count"] = after.data.get("count", 1)
            if start_after["role"] not in known:
                raise after.error("role", f"{start_after['role']!r} is not a role started before this one")
            for ref, _ in PLACEHOLDER.findall(str(start_after["count"])):
                if ref.split(".")[0] not in visible:
                    raise after.error("count", f"{{{ref}}} names nothing known here")
        roles.append(RoleSpec(name, instances, flags, each, wait_for, stop, fields.get("optional", bool, False),
                              program=tuple(program.split()) if program else None, language_of=language_of,
                              start_after=start_after))
        if wait_for:
            known.add(name)  # later roles may use this role's ready event: {server.requests}

    matrix = top.strings("matrix", required=True)
    if len(matrix) < 2:
        raise top.error("matrix", "must name at least two roles: the rows and the columns")
    for role in matrix:
        if role not in roles_data:
            raise top.error("matrix", f"{role!r} is not a role of this example")
    for role in roles:
        if role.language_of:
            if role.name in matrix or role.optional:
                raise top.error("matrix", f"{role.name!r} takes the language of {role.language_of!r}: it is no dimension")
            continue
        if (role.name in matrix) == role.optional:
            raise top.error("matrix", f"must name every role that is not optional, and no optional one ({role.name!r})")
    if not any(role.stop == "exit" for role in roles):
        raise top.error("roles", "at least one role must finish by itself (stop: exit)")
    timeouts = top.child("timeouts")
    timeouts.only("cell")
    cell_timeout = timeouts.positive("cell", 60)
    mixed = None
    if "mixed" in top.data:
        fields = top.child("mixed")
        fields.only("role", "per")
        mixed = {key: fields.get(key, str, required=True) for key in ("role", "per")}
        for key, role in mixed.items():
            if role not in matrix:
                raise fields.error(key, f"{role!r} is not a dimension of the grid")
    further = top.get("further", list, [])
    for index, cell in enumerate(further):
        where = f"further[{index}]"
        if not isinstance(cell, dict) or not cell:
            raise ConfigError(path, where, "must map roles to a language, or to a list of one per instance")
        for role, langs in cell.items():
            if role not in roles_data:
                raise ConfigError(path, f"{where}.{role}", "is not a role of this example")
            if not (isinstance(langs, str) or (isinstance(langs, list) and langs and all(isinstance(x, str) for x in langs))):
                raise ConfigError(path, f"{where}.{role}", "must be a language or a list of languages")
        lacking = [name for name in matrix if name not in cell]
        if lacking:
            raise ConfigError(path, where, f"must give every dimension of the grid a language ({', '.join(lacking)})")
    security = load_security(top, roles) if "security" in top.data else None
    tcp_only = tuple(top.strings("tcp_only")) if "tcp_only" in top.data else ()
    restarts = load_restarts(top, roles) if "restart" in top.data else None
    return Spec(example, path, top.get("description", str, ""), parameters, roles, matrix, cell_timeout, mixed, security,
                further=further, tcp_only=tcp_only, restarts=restarts)


def load_restarts(top, roles):
    """`restart: {ROLE: {event: E, count: N, by: OTHER, every: BOOL}}`: ROLE, which serves until
    SIGTERM, is killed once instance 0 of OTHER (ROLE itself unless given) has reported N events E;
    with `every: true`, once every instance of OTHER has."""
    fields, found = top.child("restart"), {}
    by_name = {role.name: role for role in roles}
    for name in fields.data:
        rule = fields.child(name)
        rule.only("event", "count", "by", "every", "parameters")
        if name not in by_name or by_name[name].stop != "signal":
            raise fields.error(name, "must be a role that serves until SIGTERM (stop: signal)")
        by = rule.get("by", str, name)
        if by not in by_name:
            raise rule.error("by", f"{by!r} is not a role of this example")
        parameters = rule.get("parameters", dict, {})
        unknown = sorted(set(parameters) - set(top.data.get("parameters") or {}))
        if unknown:
            raise rule.error("parameters", f"{unknown[0]!r} is not one of the example's parameters")
        found[name] = {"event": rule.get("event", str, required=True), "count": int(rule.positive("count", required=True)),
                       "by": None if by == name else by, "every": rule.get("every", bool, False), "parameters": parameters}
    return found


def load_security(top, roles):
    fields = top.child("security")
    fields.only("mechanisms", "server", "intruder")
    mechanisms = fields.get("mechanisms", list, required=True)
    for mechanism in mechanisms:
        if mechanism not in MECHANISMS:  # YAML reads a bare null as None: write "null"
            raise fields.error("mechanisms", f"{mechanism!r} is not one of {', '.join(MECHANISMS)} (quote \"null\")")
    names = [role.name for role in roles]
    server = fields.get("server", str, required=True)
    intruder = fields.child("intruder", required=True)
    intruder.only("role", "flags")
    intruder_role = intruder.get("role", str, required=True)
    for key, name in (("server", server), ("intruder.role", intruder_role)):
        if name not in names:
            raise fields.error(key, f"{name!r} is not a role of this example")
    if INTRUDER in names:
        raise fields.error("intruder", f"the example already has a role called {INTRUDER!r}")
    return SecuritySpec(tuple(mechanisms), server, intruder_role, intruder.get("flags", dict, {}))
