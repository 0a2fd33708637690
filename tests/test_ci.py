"""The CI workflow (.github/workflows/ci.yml) cannot run here: check that it parses as a workflow,
that it runs the README's setup and test commands, and that every command it names exists, with
every flag it gives."""
import re
import shlex
import shutil
import subprocess
import sys

import yaml

from orchestrator import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def workflow():
    document = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the key `on` as True: the workflow's triggers.
    assert set(document.get("on") or document.get(True)) >= {"push", "pull_request"}
    [job] = document["jobs"].values()
    return job


def commands(job):
    for step in job["steps"]:
        for line in step.get("run", "").splitlines():
            for command in line.split("&&"):
                if command.strip():
                    yield shlex.split(command.replace('"$GITHUB_STEP_SUMMARY"', "summary"))


def invoke_options(task):
    """The flags `invoke --help TASK` lists."""
    done = subprocess.run([sys.executable, "-m", "invoke", "--help", task], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"invoke has no task {task!r}: {done.stdout}{done.stderr}"
    return set(re.findall(r"--([a-z][a-z0-9-]*)", done.stdout))


def test_the_workflow_runs_the_readme_commands_and_every_command_exists():
    job = workflow()
    assert all("uses" in step or "run" in step for step in job["steps"])
    for step in job["steps"]:
        if "uses" in step:
            assert re.fullmatch(r"[\w-]+/[\w-]+@v\d+", step["uses"]), step["uses"]
    every = list(commands(job))
    readme = (ROOT / "README.md").read_text()
    setup, test = "./setup.sh", ".venv/bin/invoke test"
    assert f"    {setup}\n" in readme and f"    {test}\n" in readme, "the README's commands changed"
    assert ["./setup.sh"] in every and [".venv/bin/invoke", "test"] in every
    assert (ROOT / ".ci" / "run").read_text().count(test) == 1
    for argv in every:
        program = argv[0]
        if program.startswith("./"):
            assert (ROOT / program).is_file(), program
        elif program == ".venv/bin/invoke":
            flags = {arg[2:] for arg in argv[2:] if arg.startswith("--")}
            assert flags <= invoke_options(argv[1]), (argv, flags - invoke_options(argv[1]))
        else:
            assert shutil.which(program), f"{program} is not a command here"
    assert any("matrix" in argv and "--html" in argv for argv in every), "the grids' reports are not made"
    uploads = [step for step in job["steps"] if step.get("uses", "").startswith("actions/upload-artifact@")]
    assert uploads and "reports/" in uploads[0]["with"]["path"]
