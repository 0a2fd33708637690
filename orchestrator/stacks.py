"""What each language's program runs on, read off the built program and the machine, never
declared: the ZeroMQ library and its version, the runtime, and the runtime settings it starts with.
`invoke bench` prints it and records it in its JSON, so that two runs can be compared knowing what
changed between them (--compare)."""
import ctypes
import json
import os
import platform
import re
import struct
import subprocess
from functools import lru_cache
from pathlib import Path


def describe(language):
    """{"stack": one line for people, "versions": {...}, "settings": [...]} of this language's
    program as it is launched (its launch command and environment)."""
    launch = [language.expand(part) for part in language.launch]
    env = language.environment()
    program = next((Path(part) for part in launch if Path(part).is_file() and part != launch[0]), Path(launch[0]))
    if program.suffix == ".dll":
        return _dotnet(program, env)
    if launch[0] == language.expand("{python}"):
        return _python()
    return _native(program)


# --- .NET: NetMQ, the runtime, and the settings of runtimeconfig.json and DOTNET_ variables ------

def _dotnet(dll, env):
    versions = {"dotnet": _dotnet_runtime(dll)}
    deps = dll.with_suffix(".deps.json")
    if deps.exists():
        for library in json.loads(deps.read_text()).get("libraries", {}):
            name, _, version = library.partition("/")
            if name in ("NetMQ", "FSharp.Core"):
                versions[name] = version
    config = {}
    runtimeconfig = dll.with_suffix(".runtimeconfig.json")
    if runtimeconfig.exists():
        config = json.loads(runtimeconfig.read_text())["runtimeOptions"].get("configProperties", {})
    settings = ["ReadyToRun" if ready_to_run(dll) else "JIT only (no ReadyToRun code)"]
    for knob, prop, default in [("TieredCompilation", "System.Runtime.TieredCompilation", True),
                                ("TieredPGO", "System.Runtime.TieredPGO", True),
                                ("gcServer", "System.GC.Server", False)]:
        value, source = _knob(env, knob, config.get(prop), default)
        if source != "default" or knob == "TieredCompilation":
            settings.append(f"{knob} {'on' if value else 'off'} ({source})")
    extra = sorted(name for name in env if name.startswith("DOTNET_") and name[7:] not in ("TieredCompilation", "TieredPGO", "gcServer")
                   and not name.startswith(SDK_VARIABLES))
    settings += [f"{name}={env[name]}" for name in extra]
    stack = f"NetMQ {versions.get('NetMQ', '?')} on .NET {versions['dotnet']}"
    return {"stack": stack, "versions": versions, "settings": settings}


# DOTNET_ variables of the SDK and of the host, not of the runtime: not settings of the program.
SDK_VARIABLES = ("DOTNET_CLI_", "DOTNET_NOLOGO", "DOTNET_GENERATE_", "DOTNET_SKIP_", "DOTNET_ROOT", "DOTNET_INSTALL",
                 "DOTNET_MULTILEVEL", "DOTNET_ADD_GLOBAL_TOOLS", "DOTNET_NUGET", "DOTNET_HOST_")


def _knob(env, name, configured, default):
    """A .NET runtime setting: a DOTNET_ variable wins over runtimeconfig.json, which wins over the
    default (values 0/1 in variables, true/false in the file)."""
    for prefix in ("DOTNET_", "COMPlus_"):
        if prefix + name in env:
            return env[prefix + name].strip() not in ("0", ""), f"{prefix}{name}={env[prefix + name]}"
    if configured is not None:
        return bool(configured), "runtimeconfig.json"
    return default, "default"


def ready_to_run(path):
    """Whether a .NET assembly carries ReadyToRun native code: its CLI header's ManagedNativeHeader
    points at a header whose signature is "RTR" (ECMA-335 II.25.3.3; the ReadyToRun format)."""
    try:
        data = Path(path).read_bytes()
        pe = struct.unpack_from("<I", data, 0x3C)[0]
        sections, optional_size = struct.unpack_from("<H", data, pe + 6)[0], struct.unpack_from("<H", data, pe + 20)[0]
        optional = pe + 24
        directories = optional + (96 if struct.unpack_from("<H", data, optional)[0] == 0x10B else 112)
        cli_rva, cli_size = struct.unpack_from("<II", data, directories + 14 * 8)
        table = optional + optional_size

        def offset(rva):
            for index in range(sections):
                size, address, _, raw = struct.unpack_from("<IIII", data, table + index * 40 + 8)
                if address <= rva < address + max(size, 1):
                    return rva - address + raw
            raise ValueError(rva)

        if not cli_size:
            return False
        native_rva, native_size = struct.unpack_from("<II", data, offset(cli_rva) + 64)
        return bool(native_size) and data[offset(native_rva):offset(native_rva) + 4] == b"RTR\0"
    except (OSError, struct.error, ValueError):
        return False


@lru_cache(maxsize=None)
def _dotnet_runtime(dll):
    """The Microsoft.NETCore.App that runs `dll`: the newest installed patch of the version its
    runtimeconfig.json names (the default roll-forward)."""
    wanted = "?"
    try:
        wanted = json.loads(dll.with_suffix(".runtimeconfig.json").read_text())["runtimeOptions"]["framework"]["version"]
        listed = subprocess.run(["dotnet", "--list-runtimes"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, KeyError, ValueError, subprocess.SubprocessError):
        return wanted
    major_minor = wanted.split(".")[:2]
    found = [line.split()[1] for line in listed.splitlines()
             if line.startswith("Microsoft.NETCore.App ") and line.split()[1].split(".")[:2] == major_minor]
    return max(found, key=lambda v: [int(p) if p.isdigit() else 0 for p in re.split(r"[.-]", v)], default=wanted)


# --- Python: pyzmq and the libzmq it bundles ---------------------------------------------------

def _python():
    import zmq  # the interpreter the roles run on is this one ({python})

    versions = {"python": platform.python_version(), "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()}
    return {"stack": f"pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()}) on CPython {versions['python']}",
            "versions": versions, "settings": []}


# --- native programs: the system's libzmq, and the zmq crate when it is a Cargo build ----------

def _native(program):
    versions = {}
    try:
        linked = b"libzmq.so" in Path(program).read_bytes()
    except OSError:
        linked = False
    if linked:
        versions["libzmq"] = _system_libzmq()
    lock = next((folder / "Cargo.lock" for folder in Path(program).parents if (folder / "Cargo.lock").exists()), None)
    if lock:
        for name, version in re.findall(r'name = "(zmq(?:-sys)?)"\nversion = "([^"]+)"', lock.read_text()):
            versions[f"{name} crate"] = version
    stack = ", ".join(f"{name} {version}" for name, version in versions.items()) or "no ZeroMQ library found"
    return {"stack": stack, "versions": versions, "settings": []}


@lru_cache(maxsize=None)
def _system_libzmq():
    try:
        library = ctypes.CDLL("libzmq.so.5")
    except OSError:
        return "?"
    major, minor, patch = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    library.zmq_version(ctypes.byref(major), ctypes.byref(minor), ctypes.byref(patch))
    return f"{major.value}.{minor.value}.{patch.value}"


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "system": platform.platform()}
