"""A smoke test of `invoke bench`: tiny counts, a complete and well-formed output. It says nothing
about speed: benchmarks do not gate CI."""
import json
import subprocess
import sys

import pytest

from conftest import LANGS, REGISTRY
from orchestrator import ROOT
from orchestrator import bench as benchmarks

BASELINE = "c"  # not a choice of this test: invoke bench measures C↔C and plain TCP in C (orchestrator/bench.py)
ZMQ_ROLES = ("thr-sink", "thr-source", "lat-echo", "lat-ping", "inproc-thr")  # what every language of a bench runs
TCP_ROLES = ("tcp-sink", "tcp-source", "tcp-echo", "tcp-ping")  # the baseline's alone


def implements(name, roles):
    return name in REGISTRY and all(REGISTRY[name].supports("perf", role) for role in roles)


def test_a_tiny_bench_writes_every_figure(built, tmp_path):
    if not implements(BASELINE, ZMQ_ROLES + TCP_ROLES):
        pytest.skip(f"the bench's baseline, {BASELINE}, does not implement every perf role (implements: in the registry)")
    other = next((name for name in LANGS if name != BASELINE and implements(name, ZMQ_ROLES)), None)  # the first that can pair with it
    if other is None:
        pytest.skip(f"no language but {BASELINE} implements the perf roles {', '.join(ZMQ_ROLES)} (implements: in the registry)")
    pair = (other, BASELINE)
    for lang in pair:
        built[lang]
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "bench", "--size", "0,1024", "--count", "2000", "--repeat", "2",
         "--source", ",".join(pair), "--sink", ",".join(pair), "--no-build",
         "--json", str(out), "--markdown", str(tmp_path / "bench.md"), "--plot", str(tmp_path / "bench.png")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["sizes"] == [0, 1024] and report["repeat"] == 2 and report["machine"]["cores"]
    figures = {(f["kind"], f["sender"], f["receiver"], f["size"]): f for f in report["figures"]}
    expected = {(kind, s, r, size) for kind in ("thr", "lat") for s in pair for r in pair for size in (0, 1024)}
    expected |= {("inproc", lang, lang, size) for lang in pair for size in (0, 1024)}
    expected |= {(kind, BASELINE, BASELINE, size) for kind in ("tcp-thr", "tcp-lat") for size in (0, 1024)}
    assert set(figures) == expected
    for key, figure in figures.items():
        assert len(figure["samples"]) == 2 and figure["failures"] == [], key
        assert figure["min"] <= figure["median"] <= figure["max"] and figure["median"] > 0, key
        assert figure["unit"] == ("µs" if key[0] in ("lat", "tcp-lat") else "msg/s")
    assert figures[("thr", BASELINE, BASELINE, 1024)]["ratio_to_c"] == 1.0
    table = (tmp_path / "bench.md").read_text()
    for title in ("throughput at 0 B", "latency at 1024 B", "plain TCP at 1024 B", "TCP ceiling, lat"):
        assert title in table
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def untuned_language():
    """The first language of the registry with an untuned way (the .NET ones) and every perf role."""
    return next((name for name in LANGS if REGISTRY[name].untuned and implements(name, ZMQ_ROLES)), None)


def test_an_untuned_bench_measures_both_ways_and_compares_with_an_earlier_run(built, tmp_path):
    lang = untuned_language()
    if lang is None or not implements(BASELINE, ZMQ_ROLES + TCP_ROLES):
        pytest.skip("no language has an untuned way (untuned: in the registry), or the baseline lacks a perf role")
    for name in (lang, BASELINE):
        built[name]
    pair = f"{BASELINE},{lang}"
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    common = [sys.executable, "-m", "invoke", "bench", "--size", "64", "--source", pair, "--sink", pair, "--no-build"]
    done = subprocess.run(common + ["--count", "2000", "--repeat", "2", "--untuned", "--json", str(first)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(first.read_text())
    untuned = {(f["kind"], f["sender"], f["receiver"]) for f in report["figures"] if f["untuned"]}
    assert untuned == {(kind, s, r) for kind in ("thr", "lat") for s, r in [(lang, BASELINE), (BASELINE, lang), (lang, lang)]} | {
        ("inproc", lang, lang)}
    assert all(len(f["samples"]) == 2 and f["count"] > 0 for f in report["figures"])
    # What each way ran on is recorded, and the two ways of the language differ in their settings.
    stacks = report["stacks"][lang]
    assert stacks["built"]["versions"] and stacks["built"]["settings"] != stacks["untuned"]["settings"]
    assert "libzmq" in report["stacks"][BASELINE]["built"]["versions"]
    assert "as built and untuned at 64 B" in done.stdout and f"settings {lang}:" in done.stdout

    done = subprocess.run(common + ["--count", "1000", "--repeat", "1", "--compare", str(first), "--json", str(second)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"against {first}" in done.stdout and "compared:" in done.stdout
    assert "count 2000 then 1000" in done.stdout  # figures of other counts are compared, and said to be


def figure(kind="thr", unit="msg/s", samples=(100, 110, 120), sender="c", untuned=False):
    return {"kind": kind, "sender": sender, "receiver": "c", "size": 64, "untuned": untuned, "unit": unit, "count": 1000,
            "median": sorted(samples)[len(samples) // 2], "min": min(samples), "max": max(samples)}


def report(*figures, stacks=None):
    return {"example": "perf", "machine": {"cores": 2}, "stacks": stacks or {}, "figures": list(figures)}


@pytest.mark.parametrize("then, now, verdict", [
    ((100, 110, 120), (130, 140, 150), "faster"),   # every new sample above every old one
    ((100, 110, 120), (80, 90, 99), "slower"),
    ((100, 110, 120), (115, 140, 150), "within noise"),  # a ratio of 1.27, but the repeats overlap
])
def test_a_change_is_called_only_when_the_repeats_do_not_overlap(then, now, verdict):
    [change], notes = benchmarks.compare(report(figure(samples=then)), report(figure(samples=now)))
    assert change.verdict == verdict and change.ratio == pytest.approx(sorted(now)[1] / sorted(then)[1])
    assert change.noise == pytest.approx(max((max(s) - min(s)) / sorted(s)[1] for s in (then, now)))
    assert notes == []


def test_a_shorter_latency_is_faster_and_every_difference_between_the_runs_is_said():
    stack = {"stack": "NetMQ 4.0.4.5 on .NET 10.0.12", "versions": {}, "settings": ["ReadyToRun"]}
    old = report(figure("lat", "µs", (50, 51, 52)), figure(sender="python"), figure(untuned=True),
                 stacks={"csharp": {"built": stack, "untuned": stack}})
    new = report(figure("lat", "µs", (40, 41, 42)), figure(untuned=True), figure(sender="rust"),
                 stacks={"csharp": {"built": dict(stack, settings=["JIT only"])}})
    changes, notes = benchmarks.compare(old, new)
    verdicts = {change.name: change.verdict for change in changes}
    assert verdicts == {"lat c→c 64 B": "faster", "thr c→c 64 B untuned": "within noise", "thr rust→c 64 B": "not in the earlier run"}
    assert any("csharp (built)" in note and "JIT only" in note for note in notes)  # the untuned way, measured once, is no difference
    assert not any("untuned" in note for note in notes)
    assert "1 figure(s) of the earlier run not measured now" in notes


@pytest.mark.parametrize("lang", [name for name in LANGS if REGISTRY[name].untuned])
def test_the_settings_are_read_off_the_built_program(built, lang, tmp_path):
    """Directory.Build.props: the published .NET program carries ReadyToRun code and starts with
    tiered compilation off; its untuned way is the IL build with .NET's default tiering."""
    from orchestrator import stacks

    language = built[lang]
    tuned, untuned = stacks.describe(language), stacks.describe(language.as_untuned())
    assert tuned["settings"][:2] == ["ReadyToRun", "TieredCompilation off (runtimeconfig.json)"], tuned
    assert untuned["settings"][:2] == ["JIT only (no ReadyToRun code)", "TieredCompilation on (DOTNET_TieredCompilation=1)"], untuned
    assert tuned["versions"]["NetMQ"] and tuned["versions"]["dotnet"][0].isdigit()
    (tmp_path / "not.dll").write_bytes(b"MZ" + bytes(200))
    assert not stacks.ready_to_run(tmp_path / "not.dll") and not stacks.ready_to_run(tmp_path / "missing.dll")


def test_profile_reports_the_cpu_of_each_side(built):
    """invoke profile: a row per pair, each side's CPU per message a number, start-up taken off."""
    if not implements(BASELINE, ZMQ_ROLES):
        pytest.skip(f"{BASELINE} does not implement every perf role")
    built[BASELINE]
    from orchestrator import profile as profiling

    found = profiling.profile(REGISTRY, BASELINE, BASELINE, 64, 20000, repeat=1)
    assert found.msg_per_s > 0 and found.bound > 0
    assert found.source_us == found.source_us and found.sink_us == found.sink_us  # numbers, not NaN
    done = subprocess.run([sys.executable, "-m", "invoke", "profile", "--source", BASELINE, "--sink", BASELINE, "--count", "2000",
                           "--repeat", "1", "--no-build"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{BASELINE} → {BASELINE}" in done.stdout and "cores allow" in done.stdout


def test_profile_refuses_a_line_that_is_not_a_json_event():
    from orchestrator import profile as profiling

    assert profiling._events(b'{"event": "ready", "endpoint": "tcp://127.0.0.1:1"}\n\n', "c") == [
        {"event": "ready", "endpoint": "tcp://127.0.0.1:1"}]
    for line in (b"Segmentation fault\n", b"[1]\n"):
        with pytest.raises(profiling.ProfileError, match="not a JSON event"):
            profiling._events(line, "c")
