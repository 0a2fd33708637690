"""invoke bench: the throughput and latency of every language pair, next to the C↔C baseline and
to plain TCP on the same loopback (examples/perf/PROTOCOL.md). Every measurement is one cell run
by the ordinary runner (so timeouts, cleanup and saved logs are the grid's), one at a time: two
measurements must never share the machine."""
import os
import platform
import statistics
from dataclasses import dataclass, field

from . import ROOT
from .matrix import new_run_dir
from .runner import run_cell
from .spec import RoleSpec, Spec

PAYLOAD_CAP = 256 * 1024 * 1024  # bytes a throughput run may move; bigger messages, fewer of them

KINDS = {
    # kind: (binding role, connecting role, the role that reports the figure, unit)
    "thr": ("thr-sink", "thr-source", "thr-sink", "msg/s"),
    "lat": ("lat-echo", "lat-ping", "lat-ping", "µs"),
    "tcp-thr": ("tcp-sink", "tcp-source", "tcp-sink", "msg/s"),
    "tcp-lat": ("tcp-echo", "tcp-ping", "tcp-ping", "µs"),
}


@dataclass
class Figure:
    kind: str  # thr, lat, inproc, tcp-thr, tcp-lat
    sender: str  # the language that sends first (source, ping); for inproc the only one
    receiver: str  # sink or echo
    size: int
    unit: str
    samples: list = field(default_factory=list)
    failures: list = field(default_factory=list)

    @property
    def median(self):
        return statistics.median(self.samples) if self.samples else None

    def as_json(self, baseline):
        ratio = self.median / baseline.median if self.samples and baseline and baseline.samples else None
        return {
            "kind": self.kind, "sender": self.sender, "receiver": self.receiver, "size": self.size,
            "unit": self.unit, "median": self.median, "min": min(self.samples, default=None),
            "max": max(self.samples, default=None), "samples": self.samples,
            "ratio_to_c": ratio, "failures": self.failures,
        }


def counts(size, count):
    """Messages for a throughput run and round trips for a latency run at this size."""
    throughput = max(1, min(count, PAYLOAD_CAP // max(size, 1)))
    return throughput, max(1, min(count // 10, PAYLOAD_CAP // 8 // max(size, 1)))


def pair_spec(kind, size, count, timeout):
    binder, connector, _, _ = KINDS[kind]
    flags = {"size": size, "count": count}
    roles = [
        RoleSpec(binder, 1, {"endpoint": "tcp://127.0.0.1:*", **flags}, [], "ready", "exit", False),
        RoleSpec(connector, 1, {"endpoint": f"{{{binder}.endpoint}}", **flags}, [], None, "exit", False),
    ]
    return Spec("perf", ROOT / "examples/perf/PROTOCOL.md", kind, {}, roles, [binder, connector], timeout)


def inproc_spec(size, count, timeout):
    roles = [RoleSpec("inproc-thr", 1, {"size": size, "count": count}, [], None, "exit", False)]
    return Spec("perf", ROOT / "examples/perf/PROTOCOL.md", "inproc", {}, roles, ["inproc-thr"], timeout)


def measure(spec, roles, registry, run_dir, reporter):
    """Run one measurement; (figure, None) or (None, why it failed)."""
    result = run_cell(spec, roles, registry, run_dir)
    if result.status != "pass":
        return None, f"{result.status}: {result.detail}"
    [report] = [t for t in result.transcripts if t.role == reporter]
    [figure] = [e for e in report.events if e["event"] == "result"]
    return figure, None


def run_bench(registry, sizes, count, repeat, senders, receivers, timeout=120, progress=None):
    """Every figure, `repeat` times each; the repeats are the outer loop, so that a slow moment of
    the machine spreads over all pairs instead of spoiling one."""
    run_dir = new_run_dir("perf")
    figures = {}

    def figure(kind, sender, receiver, size, unit):
        return figures.setdefault((kind, sender, receiver, size), Figure(kind, sender, receiver, size, unit))

    plan = []
    for size in sizes:
        thr_count, lat_count = counts(size, count)
        for kind, langs_a, langs_b, n in [("thr", senders, receivers, thr_count), ("lat", senders, receivers, lat_count)]:
            binder, connector, reporter, unit = KINDS[kind]
            for sender in langs_a:
                for receiver in langs_b:
                    plan.append((kind, sender, receiver, size, unit, pair_spec(kind, size, n, timeout),
                                 {binder: [receiver], connector: [sender]}, reporter))
        for lang in dict.fromkeys(senders + receivers):
            plan.append(("inproc", lang, lang, size, "msg/s", inproc_spec(size, thr_count, timeout), {"inproc-thr": [lang]}, "inproc-thr"))
        for kind, n in [("tcp-thr", thr_count), ("tcp-lat", lat_count)]:
            binder, connector, reporter, unit = KINDS[kind]
            plan.append((kind, "c", "c", size, unit, pair_spec(kind, size, n, timeout), {binder: ["c"], connector: ["c"]}, reporter))

    for round_number in range(repeat):
        for kind, sender, receiver, size, unit, spec, roles, reporter in plan:
            entry = figure(kind, sender, receiver, size, unit)
            reported, failure = measure(spec, roles, registry, run_dir, reporter)
            if failure:
                entry.failures.append(failure)
            else:
                entry.samples.append(reported["latency_us"] if unit == "µs" else reported["msg_per_s"])
            if progress:
                progress(entry)
    return list(figures.values()), run_dir


def baseline(figures, kind, size):
    for f in figures:
        if f.kind == kind and f.size == size and f.sender == "c" and f.receiver == "c":
            return f
    return None


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "system": platform.platform()}


def as_json(figures, sizes, count, repeat):
    return {
        "example": "perf", "machine": machine(), "sizes": sizes, "count": count, "repeat": repeat,
        "figures": [f.as_json(baseline(figures, "lat" if f.kind in ("lat", "tcp-lat") else "thr", f.size)) for f in figures],
    }


# --- what it prints and writes -------------------------------------------------------------------


def amount(value, unit):
    if value is None:
        return "-"
    if unit == "µs":
        return f"{value:.1f} µs"
    for limit, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.2f}{suffix}"
    return f"{value:.0f}"


def cell_text(entry, base, spread=False):
    if entry is None:
        return "-"
    if not entry.samples:
        return "failed"
    text = amount(entry.median, entry.unit)
    if spread and len(entry.samples) > 1:
        text += f" ({amount(min(entry.samples), entry.unit)}–{amount(max(entry.samples), entry.unit)})"
    if base and base.samples and entry is not base:
        text += f" ×{entry.median / base.median:.2f}"
    return text


def grids(figures, sizes, senders, receivers):
    """(title, row label, column label, rows: [(name, [cell texts])]) for every table, per size."""
    found = {(f.kind, f.sender, f.receiver, f.size): f for f in figures}
    for size in sizes:
        for kind, title, row, column in [
            ("thr", f"throughput at {size} B, msg/s (× the C↔C figure)", "source", "sink"),
            ("lat", f"latency at {size} B, one way (× the C↔C figure)", "ping", "echo"),
        ]:
            base = found.get((kind, "c", "c", size))
            rows = [(s, [cell_text(found.get((kind, s, r, size)), base) for r in receivers]) for s in senders]
            yield title, row, column, receivers, rows
        thr, lat = found.get(("thr", "c", "c", size)), found.get(("lat", "c", "c", size))
        extra = [(lang, [cell_text(found.get(("inproc", lang, lang, size)), thr)]) for lang in dict.fromkeys(senders + receivers)]
        extra.append(("TCP ceiling, thr", [cell_text(found.get(("tcp-thr", "c", "c", size)), thr)]))
        extra.append(("TCP ceiling, lat", [cell_text(found.get(("tcp-lat", "c", "c", size)), lat)]))
        yield f"in-process (inproc://, two threads) and plain TCP at {size} B (× the C↔C figure)", "language", "figure", ["median"], extra


def rich_tables(figures, sizes, senders, receivers):
    from rich.table import Table

    for title, row, column, columns, rows in grids(figures, sizes, senders, receivers):
        table = Table(title=title)
        table.add_column(f"{row} \\ {column}", style="bold")
        for name in columns:
            table.add_column(name, justify="right")
        for name, cells in rows:
            table.add_row(name, *cells)
        yield table


def markdown(figures, sizes, senders, receivers, info, command):
    lines = [f"Measured with `{command}` on {info['cpu']}, {info['cores']} cores, Linux {info['kernel']}.", ""]
    lines.append("Each figure is the median of its repeats; × is the ratio to the C↔C figure of the same size.")
    lines.append("")
    for title, row, column, columns, rows in grids(figures, sizes, senders, receivers):
        lines += [f"#### {title}", "", "| " + " | ".join([f"{row} \\ {column}"] + columns) + " |", "|" + "---|" * (len(columns) + 1)]
        lines += ["| " + " | ".join([f"**{name}**"] + cells) + " |" for name, cells in rows]
        lines.append("")
    return "\n".join(lines)


def plot(figures, sizes, senders, receivers, path):
    """Heat maps, one per size and measure: each cell a pair's median, with its ratio to C↔C."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = {(f.kind, f.sender, f.receiver, f.size): f for f in figures}
    fig, axes = plt.subplots(len(sizes), 2, figsize=(13, 5.5 * len(sizes)), squeeze=False)
    for row, size in enumerate(sizes):
        for col, (kind, label, unit) in enumerate([("thr", "throughput, msg/s", "msg/s"), ("lat", "latency, µs one way (lower is better)", "µs")]):
            base = found.get((kind, "c", "c", size))
            entries = [[found.get((kind, s, r, size)) for r in receivers] for s in senders]
            grid = [[e.median if e and e.samples else float("nan") for e in line] for line in entries]
            ax = axes[row][col]
            image = ax.imshow(grid, cmap="viridis" if kind == "thr" else "viridis_r")
            ax.set_xticks(range(len(receivers)), receivers)
            ax.set_yticks(range(len(senders)), senders)
            ax.set_xlabel("sink" if kind == "thr" else "echo")
            ax.set_ylabel("source" if kind == "thr" else "ping")
            ax.set_title(f"{label} at {size} B")
            for i, line in enumerate(entries):
                for j, entry in enumerate(line):
                    text = "-" if not (entry and entry.samples) else amount(entry.median, unit)
                    if entry and entry.samples and base and base.samples and entry is not base:
                        text += f"\n×{entry.median / base.median:.2f}"
                    ax.text(j, i, text, ha="center", va="center", color="white", fontsize=8)
            fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle("every pair of languages; × is the ratio to C↔C")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
