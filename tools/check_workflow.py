#!/usr/bin/env python3
"""Checks the pre-merge workflow (.github/workflows/premerge.yml) and its script twin (CTest
`premerge_workflow_valid`): the YAML parses (PyYAML, installed by scripts/setup.sh), has the shape of
a GitHub Actions workflow, and does what issue 13 asks (make test; check with --junit, --report and
--history; the JUnit file published; reports and history uploaded); actionlint (the PyPI wheel
scripts/setup.sh installs into the venv) finds nothing; scripts/premerge.sh is valid bash and runs the
same commands. Exit 0 when all hold, 1 with one line per problem otherwise."""
import os
import shutil
import subprocess
import sys

import yaml


def main(workflow: str, script: str) -> int:
    problems = []
    with open(workflow, encoding="utf-8") as f:
        wf = yaml.safe_load(f)
    if not isinstance(wf, dict):
        print(f"{workflow}: not a YAML mapping")
        return 1
    # YAML 1.1 reads the key `on` as the boolean true.
    triggers = wf.get("on", wf.get(True))
    if not triggers:
        problems.append("no 'on' triggers")
    jobs = wf.get("jobs") or {}
    if not jobs:
        problems.append("no jobs")
    runs, uses = [], []
    for name, job in jobs.items():
        if "runs-on" not in job:
            problems.append(f"job {name}: no runs-on")
        for i, step in enumerate(job.get("steps") or []):
            if ("run" in step) == ("uses" in step):
                problems.append(f"job {name} step {i}: needs exactly one of run/uses")
            runs.append(step.get("run", ""))
            uses.append(step.get("uses", ""))
    text = "\n".join(runs)
    for needle in ("make test", "mambadiff check", "--junit", "--report", "--history", "mambadiff trend"):
        if needle not in text:
            problems.append(f"no step runs '{needle}'")
    if not any(u.startswith("actions/upload-artifact@") for u in uses):
        problems.append("no actions/upload-artifact step (reports and history)")
    if not any("junit" in u.lower() for u in uses):
        problems.append("no JUnit publishing step")

    with open(script, encoding="utf-8") as f:
        sh = f.read()
    for needle in ("make test", "check --junit", "--report", "--history", "trend"):
        if needle not in sh:
            problems.append(f"{script}: does not run '{needle}'")
    r = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    if r.returncode != 0:
        problems.append(f"{script}: bash -n: {r.stderr.strip()}")

    linter = os.path.join(os.path.dirname(sys.executable), "actionlint")
    if not os.path.exists(linter):
        linter = shutil.which("actionlint")
    if linter:
        r = subprocess.run([linter, "-no-color", workflow], capture_output=True, text=True)
        if r.returncode != 0:
            problems.append("actionlint: " + (r.stdout + r.stderr).strip().replace("\n", " | "))
        else:
            print(f"actionlint ({linter}): no problems")
    else:
        print("actionlint not installed (scripts/setup.sh installs it): YAML and structure checked only")

    for p in problems:
        print(f"{workflow}: {p}")
    if not problems:
        print(f"{workflow}: valid ({len(jobs)} job(s), {len(runs)} step(s)); {script}: valid")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
