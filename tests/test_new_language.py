"""A language joins with one registry entry and its folder (README, "Adding a language"): a
throw-away eighth entry, `eighth`, that launches the VB program under another name with its
`implements:` trimmed and NetMQ's `lacks:` (PLAIN, ZAP...), goes through the grids, the tests and
the conformance kit without any other edit, through a registry file of its own (BTB_REGISTRY)."""
import copy
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import yaml

from orchestrator import ROOT
from orchestrator.registry import REGISTRY_PATH, load_registry

pytestmark = pytest.mark.grid  # slow: whole test runs and grids with the new entry


@pytest.fixture(scope="module")
def clone(tmp_path_factory, built):
    built["python"], built["c"], built["vb"]
    data = yaml.safe_load(REGISTRY_PATH.read_text())
    entry = copy.deepcopy(data["vb"])
    entry["implements"] = {"chat": ["server", "client"], "ticker": ["subscriber", "encode"]}
    data["eighth"] = entry
    path = tmp_path_factory.mktemp("registry") / "languages.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    assert "eighth" in load_registry(path).names()
    return {**os.environ, "BTB_REGISTRY": str(path)}


def invoke(env, *args, timeout=900):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_grids_take_it(clone, tmp_path):
    """A row and a column; cells of roles it does not implement are unsupported, with the reason;
    a cell with one chat client per language (eight) names them all."""
    done = invoke(clone, "matrix", "chat", "--server", "eighth,c", "--client", "eighth,vb", "--json", str(tmp_path / "chat.json"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert json.loads((tmp_path / "chat.json").read_text())["counts"]["pass"] == 4
    done = invoke(clone, "matrix", "ticker", "--publisher", "eighth,c", "--subscriber", "eighth", "--json", str(tmp_path / "ticker.json"))
    cells = {cell["roles"]["publisher"]: cell for cell in json.loads((tmp_path / "ticker.json").read_text())["cells"]}
    assert done.returncode == 0 and cells["c"]["status"] == "pass", done.stdout[-2000:]
    assert cells["eighth"]["status"] == "unsupported" and "eighth" in cells["eighth"]["detail"], cells["eighth"]
    languages = load_registry(clone["BTB_REGISTRY"]).names()
    done = invoke(clone, "run", "chat", "--server", "eighth", *[part for lang in languages for part in ("--client", lang)])
    assert done.returncode == 0 and "verdict: pass" in done.stdout, done.stdout[-2000:] + done.stderr[-1000:]


def test_the_tests_take_it(clone, tmp_path):
    """What it implements runs and passes; what it does not is skipped with the registry's reason;
    what it lacks, it must refuse."""
    report = tmp_path / "junit.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", "tests/test_help.py", "tests/test_contract.py", "tests/test_security.py",
                           "tests/test_valuation.py", "--lang", "eighth", "-m", "not docker and not grid", "-q",
                           "-p", "no:cacheprovider", f"--junitxml={report}"], cwd=ROOT, env=clone, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    cases = list(ET.parse(report).getroot().iter("testcase"))
    skipped = [case.find("skipped").get("message", "") for case in cases if case.find("skipped") is not None]
    passed = [case for case in cases if case.find("skipped") is None]
    assert len(passed) >= 4 and skipped, done.stdout[-2000:]
    assert any("eighth does not implement valuation" in reason for reason in skipped), skipped
    # what its library lacks is tested as such: it refuses PLAIN with exit 2
    assert "test_netmq_says_what_it_cannot_do_rather_than_run_without_it[eighth]" in [case.get("name") for case in passed]


def test_the_conformance_kit_takes_it(clone):
    done = invoke(clone, "conform", "eighth", "--no-grids", timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
    assert "conformance of eighth" in done.stdout and "conforms; report" in done.stdout, done.stdout[-3000:]
