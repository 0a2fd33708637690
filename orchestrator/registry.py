"""The language registry (languages.yaml): build, launch, what each language implements, and the
combinations known not to work."""
import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import ROOT
from .config import ConfigError, Fields, load_yaml

# BTB_REGISTRY names another registry file: a language tried out before it joins (invoke conform).
REGISTRY_PATH = Path(os.environ.get("BTB_REGISTRY") or ROOT / "orchestrator" / "languages.yaml")
STAMPS = ROOT / "runs" / "builds"  # each language's input hash at its last successful build
# What a language's ZeroMQ library may lack (examples/README.md, "Security").
FEATURES = ("plain", "curve", "zap", "handshake-events", "stream-close", "unix-ipc", "steerable-proxy")
# What a language's `sources:` name (examples/concepts.yaml, the reading guides of the PROTOCOL.md).
SOURCE_KINDS = ("example", "contract", "security", "monitor")


@dataclass(frozen=True)
class KnownFailure:
    example: str
    roles: dict
    reason: str

    def matches(self, example, assignment):
        """`assignment` maps each role to the set of languages running it in one cell."""
        return example == self.example and all(
            lang in assignment.get(role, ()) for role, lang in self.roles.items()
        )


@dataclass(frozen=True)
class Defect:
    """A library defect a peer can trigger and the application cannot defend against: the
    hostile-peer battery (orchestrator/fuzz.py) reports a cell it explains as `defect`."""
    name: str
    attacks: tuple  # the battery's attacks that trigger it
    targets: tuple  # the roles it shows in (fuzz.TARGETS); empty: every role
    reason: str
    reproduction: str  # a folder of the repository with the minimal reproduction and its write-up


@dataclass
class Language:
    name: str
    build: list
    launch: list
    env: dict
    implements: dict  # example -> set of roles
    known_failures: list = field(default_factory=list)
    docker: dict = None  # dockerfile, packages, stage: how to build its container image
    lacks: dict = field(default_factory=dict)  # library feature (plain, curve, zap...) -> why it is missing
    defects: list = field(default_factory=list)  # Defect: what a hostile peer can do to its library
    inputs: list = field(default_factory=list)  # globs under ROOT that its build reads
    untuned: dict = None  # {launch, env}: the same program as its runtime runs it by default (invoke bench --untuned)
    sources: dict = field(default_factory=dict)  # kind (SOURCE_KINDS) -> the file a reader opens for it

    def source(self, kind, example=None):
        """The file (under ROOT) that holds `kind` of code: an example's own file (`{example}` or
        `{Example}` in the pattern), or the contract, security or monitor code; None if not listed."""
        pattern = self.sources.get(kind)
        if pattern is None:
            return None
        return ROOT / pattern.replace("{example}", example or "").replace("{Example}", (example or "").capitalize())

    def as_untuned(self):
        """This language launched its untuned way (same name, so that cells and reports read alike),
        or None when it has no untuned way."""
        if not self.untuned:
            return None
        return replace(self, launch=self.untuned["launch"], env={**self.env, **self.untuned["env"]}, untuned=None)

    def defect_for(self, target, attack):
        return next((defect for defect in self.defects
                     if attack in defect.attacks and (not defect.targets or target in defect.targets)), None)

    def command(self, example, role, flags):
        """The argv of one role under the launch contract: <program> <example> <role> --flag value..."""
        return [self.expand(part) for part in self.launch] + contract_args(example, role, flags)

    def environment(self):
        env = dict(os.environ)
        env.update({key: self.expand(value) for key, value in self.env.items()})
        return env

    def supports(self, example, role):
        return role in self.implements.get(example, ())

    @staticmethod
    def expand(text, **more):
        text = text.replace("{root}", str(ROOT)).replace("{python}", sys.executable)
        for name, value in more.items():
            text = text.replace("{" + name + "}", str(value))
        return text

    def inputs_digest(self):
        """A hash of the build commands and of every input file."""
        return files_digest((p for pattern in self.inputs for p in ROOT.glob(pattern)), ROOT, repr(self.build))

    def programs(self):
        """The files of the repository its launch command runs (the built program)."""
        launches = self.launch + (self.untuned["launch"] if self.untuned else [])
        return [Path(part) for part in map(self.expand, launches) if part.startswith(str(ROOT))]

    def up_to_date(self):
        stamp = STAMPS / f"{self.name}.sha256"
        return (bool(self.inputs) and stamp.exists() and stamp.read_text() == self.inputs_digest()
                and all(program.exists() for program in self.programs()))

    def run_build(self, output=None, force=False):
        """Run the build commands, unless the inputs and the program are as at the last successful
        build; raise BuildError with the tool's output when one fails. True if it built."""
        if not self.build or (not force and self.up_to_date()):
            return False
        digest = self.inputs_digest() if self.inputs else None  # the inputs as the build reads them
        for step in self.build:
            argv = [self.expand(part) for part in step]
            done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
            if output is not None:
                output(done.stdout + done.stderr)
            if done.returncode != 0:
                raise BuildError(self.name, argv, done.stdout + done.stderr)
        if digest:
            STAMPS.mkdir(parents=True, exist_ok=True)
            (STAMPS / f"{self.name}.sha256").write_text(digest)
        return True


def files_digest(paths, base, extra=""):
    """A hash of `extra` and of each file among `paths` (its name relative to `base`, and its bytes):
    what a build read, for the builds skipped here and the container images."""
    digest = hashlib.sha256(extra.encode())
    for path in sorted({Path(p) for p in paths if Path(p).is_file()}):
        digest.update(str(path.relative_to(base)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def contract_args(example, role, flags):
    """<example> <role> --flag value...: what follows the program in the launch contract."""
    args = [example, role]
    for name, value in flags.items():
        args += [f"--{name}", str(value)]
    return args


class BuildError(Exception):
    def __init__(self, language, argv, output):
        super().__init__(f"building {language} failed: {' '.join(argv)}\n{output}")
        self.language = language


class Registry:
    def __init__(self, languages, path=REGISTRY_PATH):
        self.languages = languages
        self.path = path

    def __getitem__(self, name):
        try:
            return self.languages[name]
        except KeyError:
            raise KeyError(f"unknown language {name!r} (known: {', '.join(self.languages)})") from None

    def __contains__(self, name):
        return name in self.languages

    def names(self):
        return list(self.languages)

    def unsupported(self, programs):
        """Why a cell cannot run (a language lacks a role), or None; `programs` maps each
        (example, role) of the launch contract that the cell runs to its languages."""
        for (example, role), langs in programs.items():
            for lang in sorted(langs):
                if not self[lang].supports(example, role):
                    return f"{lang} does not implement {example} {role}"
        return None

    def known_failure(self, example, assignment):
        for language in self.languages.values():
            for known in language.known_failures:
                if known.matches(example, assignment):
                    return known
        return None


def _texts_by_name(fields, key, names, what, wrong):
    """A mapping of one of `names` to a non-empty text (`lacks:` reasons, `sources:` paths)."""
    texts = fields.get(key, dict, {})
    for name, text in texts.items():
        if name not in names:
            raise fields.error(f"{key}.{name}", f"unknown {what} ({what}s: {', '.join(names)})")
        if not isinstance(text, str) or not text:
            raise fields.error(f"{key}.{name}", wrong)
    return texts


def load_registry(path=REGISTRY_PATH):
    path = Path(path)
    data = load_yaml(path)
    languages = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise ConfigError(path, name, "must be a mapping")
        fields = Fields(path, entry, name)
        fields.only("build", "launch", "env", "implements", "known_failures", "docker", "lacks", "defects", "inputs", "untuned", "sources")
        build = fields.get("build", list, [])
        for index, step in enumerate(build):
            if not isinstance(step, list) or not step or not all(isinstance(p, str) for p in step):
                raise ConfigError(path, f"{name}.build[{index}]", "must be a non-empty list of strings")
        launch = fields.strings("launch", required=True)
        if not launch:
            raise fields.error("launch", "must not be empty")
        env = fields.get("env", dict, {})
        implements = {}
        for example, roles in fields.get("implements", dict, required=True).items():
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                raise ConfigError(path, f"{name}.implements.{example}", "must be a list of role names")
            implements[example] = set(roles)
        known = []
        for index, item in enumerate(fields.get("known_failures", list, [])):
            where = f"{name}.known_failures[{index}]"
            if not isinstance(item, dict):
                raise ConfigError(path, where, "must be a mapping")
            entry_fields = Fields(path, item, where)
            entry_fields.only("example", "roles", "reason")
            roles = entry_fields.get("roles", dict, required=True)
            if not roles or not all(isinstance(v, str) for v in roles.values()):
                raise entry_fields.error("roles", "must map role names to language names")
            known.append(
                KnownFailure(
                    entry_fields.get("example", str, required=True),
                    roles,
                    entry_fields.get("reason", str, required=True),
                )
            )
        docker = None
        if "docker" in entry:
            image = fields.child("docker")
            image.only("dockerfile", "packages", "stage")
            docker = {
                "dockerfile": image.get("dockerfile", str, required=True),
                "packages": image.strings("packages", []),
                "stage": image.get("stage", list, required=True),
            }
            for index, step in enumerate(docker["stage"]):
                if not isinstance(step, list) or not step or not all(isinstance(p, str) for p in step):
                    raise ConfigError(path, f"{name}.docker.stage[{index}]", "must be a non-empty list of strings")
        lacks = _texts_by_name(fields, "lacks", FEATURES, "feature", "must give the reason as text")
        defects = []
        for defect, item in fields.get("defects", dict, {}).items():
            where = f"{name}.defects.{defect}"
            if not isinstance(item, dict):
                raise ConfigError(path, where, "must be a mapping")
            entry_fields = Fields(path, item, where)
            entry_fields.only("attacks", "targets", "reason", "reproduction")
            reproduction = entry_fields.get("reproduction", str, required=True)
            if not (ROOT / reproduction).exists():
                raise entry_fields.error("reproduction", f"{reproduction} does not exist")
            defects.append(Defect(defect, tuple(entry_fields.strings("attacks", required=True)),
                                  tuple(entry_fields.strings("targets", [])),
                                  entry_fields.get("reason", str, required=True), reproduction))
        untuned = None
        if "untuned" in entry:
            variant = fields.child("untuned")
            variant.only("launch", "env")
            untuned = {"launch": variant.strings("launch", required=True), "env": variant.get("env", dict, {})}
            if not untuned["launch"]:
                raise variant.error("launch", "must not be empty")
            if not all(isinstance(value, str) for value in untuned["env"].values()):
                raise variant.error("env", "must map names to strings")
        inputs = fields.strings("inputs", [])
        if build and inputs and not any(ROOT.glob(pattern) for pattern in inputs):
            raise fields.error("inputs", f"no file matches {inputs}")
        sources = _texts_by_name(fields, "sources", SOURCE_KINDS, "kind", "must be a path under the repository")
        languages[name] = Language(name, build, launch, env, implements, known, docker, lacks, defects, inputs, untuned,
                                   sources)
    if not languages:
        raise ConfigError(path, "", "no languages")
    for language in languages.values():
        for known in language.known_failures:
            for role, lang in known.roles.items():
                if lang not in languages:
                    raise ConfigError(path, f"{language.name}.known_failures", f"unknown language {lang!r}")
    return Registry(languages, path)
