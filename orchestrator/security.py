"""Security as a grid dimension (examples/README.md, "Security"): which mechanism a cell runs
under, the fresh keys and passwords of each cell, the refusal cases, and what a cell needs of each
language's library (`lacks:` in languages.yaml)."""
import secrets
from dataclasses import dataclass, field

import zmq

MECHANISMS = ("null", "plain", "curve")
# A refusal cell adds one intruder to a cell that otherwise passes: its credentials are wrong in
# exactly one way, and the server must turn it away while it serves the others.
REFUSALS = {
    "wrong-server-key": ("curve", "the intruder's CURVE keys are allowed, but it expects another server key"),
    "unknown-client-key": ("curve", "the intruder's CURVE keypair is not among the server's allowed client keys"),
    "wrong-password": ("plain", "the intruder gives the right PLAIN username with a wrong password"),
}
INTRUDER = "intruder"  # the role name of the intruder in a refusal cell


def refusals_of(mechanism):
    return [case for case, (mech, _) in REFUSALS.items() if mech == mechanism]


def keypair():
    """A fresh CURVE keypair in Z85, (public, secret)."""
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


@dataclass(frozen=True)
class SecuritySpec:
    """The `security:` section of an example's spec.yaml."""

    mechanisms: tuple
    server: str  # the role that is the security server; every other role is its client
    intruder_role: str  # refusal cells: one more instance of this role...
    intruder_flags: dict  # ...with these flags changed


@dataclass
class CellSecurity:
    """The mechanism of one cell, its refusal case (or None), and after `for_cell`, its keys."""

    mechanism: str = "null"
    refusal: str = None
    server_role: str = "server"
    keys: dict = field(default_factory=dict)  # (role, index) -> flags
    zap: bool = False  # the server checks client credentials with a ZAP handler
    notes: list = field(default_factory=list)  # what this cell cannot show, and why
    reports: dict = field(default_factory=dict)  # role -> the library reports handshake failures

    def label(self, intruder_role="client"):
        text = f"security {self.mechanism}"
        return text + (f", refusal {self.refusal} (the intruder is a {intruder_role} of the column's language)" if self.refusal else "")

    def needs(self, role):
        """The library features one role needs in this cell."""
        wanted = [] if self.mechanism == "null" else [self.mechanism]
        if role == self.server_role and (self.mechanism == "plain" or self.refusal == "unknown-client-key"):
            wanted.append("zap")  # without ZAP, libzmq's PLAIN server admits any password
        return wanted

    def unsupported(self, roles, registry):
        """Why this cell cannot run (a language lacks what a role needs), or None."""
        for role, langs in roles.items():
            for lang in dict.fromkeys(langs):
                for feature in self.needs(role):
                    reason = registry[lang].lacks.get(feature)
                    if reason:
                        return f"{lang} {role}: {reason}"
        return None

    def for_cell(self, roles, registry):
        """A copy with fresh credentials for every role instance of the cell `roles`."""
        cell = CellSecurity(self.mechanism, self.refusal, self.server_role)
        server_lang = roles[self.server_role][0]
        cell.reports = {role: "handshake-events" not in registry[langs[0]].lacks for role, langs in roles.items()}
        if self.mechanism == "null":
            return cell
        user, password = "btb", secrets.token_hex(12)
        server_public, server_secret = keypair()
        clients = {}
        for role, langs in roles.items():
            for index in range(len(langs)):
                if role == self.server_role:
                    continue
                public, secret = keypair()
                clients[(role, index)] = public
                if self.mechanism == "curve":
                    server_key = server_public
                    if role == INTRUDER and self.refusal == "wrong-server-key":
                        server_key = keypair()[0]
                    cell.keys[(role, index)] = {"curve-server": server_key, "curve-public": public, "curve-secret": secret}
                else:
                    wrong = role == INTRUDER and self.refusal == "wrong-password"
                    cell.keys[(role, index)] = {"plain-user": user, "plain-password": secrets.token_hex(12) if wrong else password}
        server = {"curve-secret": server_secret} if self.mechanism == "curve" else {"plain-user": user, "plain-password": password}
        zap_missing = registry[server_lang].lacks.get("zap")
        if self.mechanism == "plain":
            cell.zap = True
        elif zap_missing:
            cell.notes.append(f"client keys not checked: {zap_missing}")
        else:
            cell.zap = True
            allowed = [key for (role, _), key in clients.items() if role != INTRUDER or self.refusal == "wrong-server-key"]
            server["curve-clients"] = ",".join(allowed)
        for index in range(len(roles[self.server_role])):
            cell.keys[(self.server_role, index)] = server
        return cell

    def flags(self, role, index):
        flags = {} if self.mechanism == "null" else {"security": self.mechanism}
        return {**flags, **self.keys.get((role, index), {})}
