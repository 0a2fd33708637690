"""A smoke test of `invoke bench`: tiny counts, a complete and well-formed output. It says nothing
about speed: benchmarks do not gate CI."""
import json
import subprocess
import sys

import pytest

from conftest import LANGS, REGISTRY
from orchestrator import ROOT

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
