"""invoke bench: the throughput and latency of every language pair, next to the C↔C baseline and
to plain TCP on the same loopback (examples/perf/PROTOCOL.md). Every measurement is one cell run
by the ordinary runner (so timeouts, cleanup and saved logs are the grid's), one at a time: two
measurements must never share the machine."""
import statistics
from dataclasses import dataclass, field

from . import ROOT, stacks
from .matrix import new_run_dir
from .registry import Registry
from .runner import run_cell
from .spec import RoleSpec, Spec

PAYLOAD_CAP = 256 * 1024 * 1024  # bytes a throughput run may move; bigger messages, fewer of them
# The plain-TCP ceiling moves 10 times the messages of a ZeroMQ run (at most 1 GiB): with as many as
# a ZeroMQ run it would last a few milliseconds, fit in the loopback's socket buffers, and swing twofold.
CEILING_FACTOR, CEILING_CAP = 10, 1 << 30

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
    count: int  # messages, or round trips, per run
    untuned: bool = False  # run the untuned way (the registry's `untuned:`, invoke bench --untuned)
    samples: list = field(default_factory=list)
    failures: list = field(default_factory=list)

    @property
    def key(self):
        return (self.kind, self.sender, self.receiver, self.size, self.untuned)

    @property
    def median(self):
        return statistics.median(self.samples) if self.samples else None

    @property
    def spread(self):
        """(max − min) / median of the repeats: the noise band of this figure."""
        return (max(self.samples) - min(self.samples)) / self.median if self.samples and self.median else None

    def as_json(self, baseline):
        ratio = self.median / baseline.median if self.samples and baseline and baseline.samples else None
        return {
            "kind": self.kind, "sender": self.sender, "receiver": self.receiver, "size": self.size,
            "untuned": self.untuned, "unit": self.unit, "count": self.count, "median": self.median,
            "min": min(self.samples, default=None), "max": max(self.samples, default=None),
            "spread": self.spread, "samples": self.samples, "ratio_to_c": ratio, "failures": self.failures,
        }


def counts(size, count):
    """Messages for a throughput run, round trips for a latency run, and messages for a run of the
    TCP ceiling, at this size."""
    throughput = max(1, min(count, PAYLOAD_CAP // max(size, 1)))
    latency = max(1, min(count // 100, PAYLOAD_CAP // 8 // max(size, 1)))
    return throughput, latency, max(1, min(count * CEILING_FACTOR, CEILING_CAP // max(size, 1)))


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


def untuned_languages(registry, langs):
    """The languages of `langs` that have an untuned way to run (the registry's `untuned:`)."""
    return [lang for lang in langs if registry[lang].untuned]


def untuned_registry(registry, lang):
    """The registry with `lang` launched its untuned way, everything else as it is."""
    return Registry({**registry.languages, lang: registry[lang].as_untuned()}, registry.path)


def plan_bench(registry, sizes, count, senders, receivers, untuned=False, timeout=120):
    """Every measurement of one round: (figure, spec, roles, reporter, registry)."""
    plan = []
    langs = list(dict.fromkeys(senders + receivers))

    def pair(kind, sender, receiver, size, n, among=registry, plain=False):
        binder, connector, reporter, unit = KINDS[kind]
        plan.append((Figure(kind, sender, receiver, size, unit, n, plain), pair_spec(kind, size, n, timeout),
                     {binder: [receiver], connector: [sender]}, reporter, among))

    def inproc(lang, size, n, among=registry, plain=False):
        plan.append((Figure("inproc", lang, lang, size, "msg/s", n, plain), inproc_spec(size, n, timeout),
                     {"inproc-thr": [lang]}, "inproc-thr", among))

    for size in sizes:
        thr_count, lat_count, ceiling = counts(size, count)
        for kind, n in [("thr", thr_count), ("lat", lat_count)]:
            for sender in senders:
                for receiver in receivers:
                    pair(kind, sender, receiver, size, n)
        for lang in langs:
            inproc(lang, size, thr_count)
        pair("tcp-thr", "c", "c", size, ceiling)
        pair("tcp-lat", "c", "c", size, lat_count)
        # The untuned way of a language, beside its figures as built: paired with C both ways,
        # with itself, and in process (C is the baseline: it is always built).
        for lang in untuned_languages(registry, langs) if untuned else []:
            among = untuned_registry(registry, lang)
            for kind, n in [("thr", thr_count), ("lat", lat_count)]:
                for sender, receiver in dict.fromkeys([(lang, "c"), ("c", lang), (lang, lang)]):
                    pair(kind, sender, receiver, size, n, among, plain=True)
            inproc(lang, size, thr_count, among, plain=True)
    return plan


def run_bench(registry, sizes, count, repeat, senders, receivers, untuned=False, timeout=120, progress=None):
    """Every figure, `repeat` times each; the repeats are the outer loop, so that a slow moment of
    the machine spreads over all pairs instead of spoiling one."""
    run_dir = new_run_dir("perf")
    plan = plan_bench(registry, sizes, count, senders, receivers, untuned, timeout)
    for _ in range(repeat):
        for entry, spec, roles, reporter, among in plan:
            reported, failure = measure(spec, roles, among, run_dir, reporter)
            if failure:
                entry.failures.append(failure)
            else:
                entry.samples.append(reported["latency_us"] if entry.unit == "µs" else reported["msg_per_s"])
            if progress:
                progress(entry)
    return [entry for entry, *_ in plan], run_dir


def baseline(figures, kind, size):
    for f in figures:
        if f.kind == kind and f.size == size and f.sender == "c" and f.receiver == "c" and not f.untuned:
            return f
    return None


def describe_stacks(registry, langs, untuned=False):
    """What every language of the bench ran on (orchestrator/stacks.py), C always (the baseline)."""
    described = {}
    for lang in dict.fromkeys(langs + ["c"]):
        described[lang] = {"built": stacks.describe(registry[lang])}
        if untuned and registry[lang].untuned:
            described[lang]["untuned"] = stacks.describe(registry[lang].as_untuned())
    return described


def settings_lines(described):
    """One line per language: its stack, and the settings it ran with (tuned, then untuned)."""
    lines = []
    for lang, ways in described.items():
        line = f"{lang}: {ways['built']['stack']}"
        if ways["built"]["settings"]:
            line += "; " + ", ".join(ways["built"]["settings"])
        if "untuned" in ways:
            line += "; untuned: " + ", ".join(ways["untuned"]["settings"])
        lines.append(line)
    return lines


def as_json(figures, sizes, count, repeat, described, untuned=False):
    return {
        "example": "perf", "machine": stacks.machine(), "stacks": described, "sizes": sizes, "count": count,
        "repeat": repeat, "untuned": untuned, "ceiling": {"factor": CEILING_FACTOR, "cap_bytes": CEILING_CAP},
        "figures": [f.as_json(baseline(figures, "lat" if f.kind in ("lat", "tcp-lat") else "thr", f.size)) for f in figures],
    }


# --- against an earlier run (invoke bench --compare OLD.json) -------------------------------------


@dataclass
class Change:
    key: tuple  # (kind, sender, receiver, size, untuned)
    unit: str
    old: dict  # the figure as the JSON holds it
    new: dict
    ratio: float  # new median / old median
    noise: float  # the wider of the two spreads, (max − min) / median
    verdict: str  # faster, slower, within noise, or why there is no ratio

    @property
    def name(self):
        kind, sender, receiver, size, untuned = self.key
        pair = sender if kind == "inproc" else f"{sender}→{receiver}"
        return f"{kind} {pair} {size} B" + (" untuned" if untuned else "")


def figure_key(figure):
    return (figure["kind"], figure["sender"], figure["receiver"], figure["size"], bool(figure.get("untuned")))


def compare(old, new):
    """Every figure of `new` (a report as as_json writes it) against the same figure of `old`:
    ([Change], [what else differs between the two runs]). A change is `faster` or `slower` only when
    the two runs' repeats do not overlap at all (every new sample beyond every old one); otherwise
    it is within the noise, whatever the ratio of the medians."""
    notes = []
    if old.get("machine") != new.get("machine"):
        notes.append(f"machine: {old.get('machine')} then {new.get('machine')}")
    for lang in sorted(set(old.get("stacks", {})) & set(new.get("stacks", {}))):
        for way in ("built", "untuned"):  # an untuned way measured in one run only is no difference
            before, after = old["stacks"][lang].get(way), new["stacks"][lang].get(way)
            if before and after and before != after:
                notes.append(f"{lang} ({way}): {_stack_text(before)} then {_stack_text(after)}")
    earlier = {figure_key(f): f for f in old.get("figures", [])}
    changes = []
    for figure in new["figures"]:
        key = figure_key(figure)
        was = earlier.get(key)
        if was is None:
            verdict, ratio, noise = "not in the earlier run", None, None
        elif not was["median"] or not figure["median"]:
            verdict, ratio, noise = "failed in one of the runs", None, None
        else:
            ratio = figure["median"] / was["median"]
            noise = max(_spread(was), _spread(figure))
            above, below = figure["min"] > was["max"], figure["max"] < was["min"]  # every sample beyond every old one
            if figure["unit"] == "µs":  # a latency: lower is faster
                above, below = below, above
            verdict = "faster" if above else "slower" if below else "within noise"
            if was.get("count") is not None and was.get("count") != figure.get("count"):
                verdict += f" (count {was['count']} then {figure['count']})"
        changes.append(Change(key, figure["unit"], was, figure, ratio, noise, verdict))
    gone = [key for key in earlier if key not in {c.key for c in changes}]
    if gone:
        notes.append(f"{len(gone)} figure(s) of the earlier run not measured now")
    return changes, notes


def _spread(figure):
    if figure.get("spread") is not None:
        return figure["spread"]
    return (figure["max"] - figure["min"]) / figure["median"] if figure.get("median") else 0.0


def _stack_text(described):
    return described["stack"] + (f" ({', '.join(described['settings'])})" if described["settings"] else "")


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


def spread_text(entry):
    return "-" if entry is None or entry.spread is None else f"{entry.spread * 100:.0f} %"


def grids(figures, sizes, senders, receivers):
    """(title, row label, column label, columns, rows: [(name, [cell texts])]) for every table, per size."""
    found = {f.key: f for f in figures}
    langs = list(dict.fromkeys(senders + receivers))
    for size in sizes:
        for kind, title, row, column in [
            ("thr", f"throughput at {size} B, msg/s (× the C↔C figure)", "source", "sink"),
            ("lat", f"latency at {size} B, one way (× the C↔C figure)", "ping", "echo"),
        ]:
            base = found.get((kind, "c", "c", size, False))
            rows = [(s, [cell_text(found.get((kind, s, r, size, False)), base) for r in receivers]) for s in senders]
            yield title, row, column, receivers, rows
        thr, lat = found.get(("thr", "c", "c", size, False)), found.get(("lat", "c", "c", size, False))
        extra = []
        for name, entry, base in [(lang, found.get(("inproc", lang, lang, size, False)), thr) for lang in langs] + [
                ("TCP ceiling, thr", found.get(("tcp-thr", "c", "c", size, False)), thr),
                ("TCP ceiling, lat", found.get(("tcp-lat", "c", "c", size, False)), lat)]:
            extra.append((name, [cell_text(entry, base), spread_text(entry)]))
        yield (f"in-process (inproc://, two threads) and plain TCP at {size} B (× C↔C; spread: (max − min) / median)",
               "language", "figure", ["median", "spread"], extra)
        untuned = [lang for lang in langs if found.get(("inproc", lang, lang, size, True))]
        if not untuned:
            continue
        rows = []
        for lang in untuned:
            for kind_thr, kind_lat, sender, receiver, name in [
                    ("thr", "lat", lang, "c", f"{lang} → c"), ("thr", "lat", "c", lang, f"c → {lang}"),
                    ("thr", "lat", lang, lang, f"{lang} → {lang}"), ("inproc", None, lang, lang, f"{lang} in process")]:
                tuned_thr, plain_thr = (found.get((kind_thr, sender, receiver, size, u)) for u in (False, True))
                tuned_lat, plain_lat = ((found.get((kind_lat, sender, receiver, size, u)) if kind_lat else None) for u in (False, True))
                gain = (f"×{tuned_thr.median / plain_thr.median:.2f}" if tuned_thr and plain_thr and tuned_thr.samples and plain_thr.samples else "-")
                rows.append((name, [cell_text(tuned_thr, thr), cell_text(plain_thr, thr), gain, cell_text(tuned_lat, lat), cell_text(plain_lat, lat)]))
        yield (f"as built and untuned at {size} B (× the C↔C figure; gain: as built / untuned throughput)", "pair", "figure",
               ["msg/s as built", "msg/s untuned", "gain", "latency as built", "latency untuned"], rows)


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


def markdown(figures, sizes, senders, receivers, info, command, described):
    lines = [f"Measured with `{command}` on {info['cpu']}, {info['cores']} cores, Linux {info['kernel']}.", ""]
    lines += [f"* {line}" for line in settings_lines(described)] + [""]
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

    found = {(f.kind, f.sender, f.receiver, f.size): f for f in figures if not f.untuned}
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
