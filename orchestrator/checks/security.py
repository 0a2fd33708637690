"""Checks what security adds to any example (examples/README.md, "Security"): every role ran the
cell's mechanism, the ZAP handler admitted every client, and in a refusal cell the intruder got
nothing through while the server went on serving everyone else."""
from ..security import INTRUDER
from . import events

# What a role may report once it is in: seeing any of these, the intruder got through.
ADMITTED_EVENTS = ("ready", "roster", "received", "sent", "done")


def identity(secure, t):
    """How the server's ZAP handler names this role: its CURVE public key, or its PLAIN username."""
    return t.flags.get("curve-public") if secure.mechanism == "curve" else t.flags.get("plain-user")


def check(spec, transcripts):
    secure = spec.secure
    problems = []
    servers = [t for t in transcripts if t.role == secure.server_role]
    intruders = [t for t in transcripts if t.role == INTRUDER]
    others = [t for t in transcripts if t.role not in (INTRUDER, secure.server_role)]
    for t in servers + others:
        ready = events(t, "ready")
        if ready and ready[0].get("security") != secure.mechanism:
            problems.append(f"{t.label}: its ready event says security {ready[0].get('security')!r}, not {secure.mechanism!r}")
    for server in servers:
        admitted = [e.get("identity") for e in events(server, "authenticated")]
        if secure.zap:
            for t in others:
                if identity(secure, t) not in admitted:
                    problems.append(f"{server.label}: its ZAP handler never admitted {t.label} ({identity(secure, t)})")
        elif admitted:
            problems.append(f"{server.label}: reported {len(admitted)} ZAP answers but was given no ZAP handler to run")
        if not secure.refusal:
            for name in ("denied", "handshake-failed"):
                if events(server, name):
                    first = events(server, name)[0]
                    problems.append(f"{server.label}: {name} event in a cell without an intruder: {first}")
        for intruder in intruders:
            problems += refusal_problems(secure, server, intruder)
    return problems


def refusal_problems(secure, server, intruder):
    """The intruder got nothing in and nothing out, and the transcript shows the refusal wherever
    the library can show it. (That the others were served is the example's own check.)"""
    problems = []
    through = [e["event"] for e in intruder.events if e["event"] in ADMITTED_EVENTS]
    if through:
        problems.append(f"{intruder.label}: got through the {secure.mechanism.upper()} handshake: it reported {', '.join(dict.fromkeys(through))}")
    if intruder.exit_code != 1:
        problems.append(f"{intruder.label}: exit code {intruder.exit_code}, not 1 (refused)")
    error = (events(intruder, "error") or [{}])[-1]
    expected = "refused" if secure.reports.get(INTRUDER) else "timeout"
    if error.get("code") != expected:
        problems.append(f"{intruder.label}: its last error is {error.get('code')!r}, not {expected!r}")
    name = intruder.flags.get("name")
    leaked = [e for e in server.events if name is not None and name in (e.get("handle"), e.get("name"))]
    if leaked:
        problems.append(f"{server.label}: a message of the intruder reached it: {leaked[0]}")
    if secure.reports.get(secure.server_role) and not events(server, "handshake-failed"):
        problems.append(f"{server.label}: no handshake-failed event for the intruder")
    auth_case = secure.refusal in ("unknown-client-key", "wrong-password")
    if secure.zap and auth_case:
        denied = [e for e in events(server, "denied") if e.get("identity") == identity(secure, intruder)]
        if not denied:
            problems.append(f"{server.label}: its ZAP handler never denied {intruder.label} ({identity(secure, intruder)})")
    return problems


def notes(spec, transcripts):
    """What a passing cell could not show, and why (a library without the feature)."""
    secure = spec.secure
    found = list(secure.notes)
    if secure.refusal and not secure.reports.get(INTRUDER) and not secure.reports.get(secure.server_role):
        found.append("the refusal shows only as the intruder's silence: neither library reports handshake failures")
    return found
