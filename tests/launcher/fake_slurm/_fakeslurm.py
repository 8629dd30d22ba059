"""A fake SLURM for tests: ``sbatch``, ``srun``, ``scontrol`` and ``scancel`` on one machine.

Only what the generated batch scripts use, with SLURM's semantics where they matter:

* ``sbatch [--parsable] SCRIPT`` returns a job id at once; a detached "controller" runs the script
  with the job's environment (``SLURM_JOB_ID``, ``SLURM_JOB_NODELIST``, ``SLURM_RESTART_COUNT``...),
  its output appended to the ``#SBATCH --output`` file. When the script asked for ``scontrol
  requeue``, the controller runs it again (``SLURM_RESTART_COUNT`` + 1), as slurmctld would.
  When the batch shell exits, every process left in the job's steps is killed (cgroup cleanup).
* ``srun`` starts one task per selected node (``--nodes``/``--nodelist``/``--exclude``), each
  with ``SLURM_NODEID``/``SLURM_PROCID``/``SLURMD_NODENAME``, in its own process group, and
  forwards USR1/USR2/TERM/INT/HUP to every process of the step (like proctrack: not only the
  task's first process). ``--kill-on-bad-exit=1`` kills the step when a task fails; ``--wait=S``
  kills the remaining tasks S seconds after the first one exits.
* ``scontrol show hostnames [LIST]``: LIST (default ``$SLURM_JOB_NODELIST``) split at commas.
  ``scontrol requeue JOBID`` records the request.
* ``scancel --batch --signal=SIG JOBID`` signals the batch shell (as ``--signal=B:...`` does).

State lives in ``$FAKE_SLURM_STATE/<jobid>/``; the job's nodes are ``$FAKE_SLURM_NODES`` (comma
or space separated, default ``localhost``). Unknown options are errors, so a typo in a generated
script fails the test instead of being ignored.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

FORWARDED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
MAX_REQUEUES = 5


def _die(tool: str, msg: str) -> int:
    print(f"{tool} (fake): {msg}", file=sys.stderr)
    return 2


def state_root() -> Path:
    root = os.environ.get("FAKE_SLURM_STATE")
    if not root:
        raise SystemExit("fake slurm: FAKE_SLURM_STATE is not set")
    return Path(root)


def job_dir(job_id: str) -> Path:
    return state_root() / str(job_id)


def nodes() -> list[str]:
    return [n for n in re.split(r"[,\s]+", os.environ.get("FAKE_SLURM_NODES", "localhost")) if n]


def _append(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def _kill_groups(jd: Path, sig: int) -> None:
    path = jd / "pgids"
    if not path.exists():
        return
    for line in path.read_text().split():
        try:
            os.killpg(int(line), sig)
        except (ProcessLookupError, PermissionError):
            pass


# --- sbatch ------------------------------------------------------------------------------------
def _directives(script: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in script.read_text().splitlines():
        if not line.startswith("#SBATCH"):
            if line.strip() and not line.startswith("#"):
                break  # directives end at the first command, as in SLURM
            continue
        opt = line[len("#SBATCH"):].strip()
        key, _, value = opt.partition("=")
        out[key.lstrip("-")] = value
    return out


def sbatch_main(argv: list[str]) -> int:
    parsable = "--parsable" in argv
    args = [a for a in argv if a != "--parsable"]
    if len(args) != 1 or args[0].startswith("-"):
        return _die("sbatch", f"expected [--parsable] SCRIPT, got {argv}")
    script = Path(args[0]).resolve()
    d = _directives(script)
    want = int(d.get("nodes", "1"))
    if want != len(nodes()):
        return _die("sbatch", f"script asks for {want} nodes, FAKE_SLURM_NODES has {len(nodes())}")
    job_id = str(random.randint(100000, 999999))
    jd = job_dir(job_id)
    jd.mkdir(parents=True)
    (jd / "script").write_text(str(script))
    (jd / "state").write_text("PENDING")
    controller = subprocess.Popen([sys.executable, __file__, "controller", job_id], start_new_session=True,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(jd / "controller.log", "w"))
    (jd / "controller.pid").write_text(str(controller.pid))
    print(job_id if parsable else f"Submitted batch job {job_id}")
    return 0


def controller_main(job_id: str) -> int:
    jd = job_dir(job_id)
    script = Path((jd / "script").read_text())
    d = _directives(script)
    name = d.get("job-name", script.name)
    output = d.get("output", f"slurm-{job_id}.out").replace("%x", name).replace("%j", job_id)
    mode = "a" if d.get("open-mode") == "append" else "w"
    env = {**os.environ, "SLURM_JOB_ID": job_id, "SLURM_JOBID": job_id, "SLURM_JOB_NAME": name,
           "SLURM_JOB_NODELIST": ",".join(nodes()), "SLURM_NNODES": str(len(nodes())),
           "SLURM_JOB_NUM_NODES": str(len(nodes())), "SLURM_SUBMIT_DIR": os.getcwd()}
    restarts, rc = 0, 0
    while True:
        env["SLURM_RESTART_COUNT"] = str(restarts)
        (jd / "state").write_text("RUNNING")
        with open(output, mode) as out:
            batch = subprocess.Popen(["bash", str(script)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
            (jd / "batch.pid").write_text(str(batch.pid))
            rc = batch.wait()
        _append(jd / "runs", json.dumps({"restart": restarts, "rc": rc}))
        # The job's allocation ends with its batch shell: nothing of its steps survives it.
        _kill_groups(jd, signal.SIGKILL)
        try:
            os.killpg(batch.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        mode = "a"
        requeue = jd / "requeue_requested"
        if requeue.exists() and restarts < MAX_REQUEUES:
            requeue.unlink()
            restarts += 1
            (jd / "state").write_text("REQUEUED")
            continue
        break
    (jd / "done").write_text(json.dumps({"rc": rc, "restarts": restarts}))
    (jd / "state").write_text("COMPLETED" if rc == 0 else "FAILED")
    return 0


# --- scontrol / scancel ------------------------------------------------------------------------
def scontrol_main(argv: list[str]) -> int:
    if argv[:2] == ["show", "hostnames"] and len(argv) <= 3:
        nodelist = argv[2] if len(argv) == 3 else os.environ.get("SLURM_JOB_NODELIST", "")
        if not nodelist:
            return _die("scontrol", "no node list")
        print("\n".join(n for n in nodelist.split(",") if n))
        return 0
    if len(argv) == 2 and argv[0] == "requeue":
        jd = job_dir(argv[1])
        if not jd.is_dir():
            return _die("scontrol", f"Invalid job id specified: {argv[1]}")
        _append(jd / "requeues", str(time.time()))
        (jd / "requeue_requested").touch()
        return 0
    return _die("scontrol", f"unsupported arguments {argv}")


def scancel_main(argv: list[str]) -> int:
    sig, batch, job = "", False, ""
    it = iter(argv)
    for a in it:
        if a in ("-b", "--batch"):
            batch = True
        elif a in ("-s", "--signal"):
            sig = next(it, "")
        elif a.startswith("--signal="):
            sig = a.split("=", 1)[1]
        elif not a.startswith("-"):
            job = a
        else:
            return _die("scancel", f"unsupported option {a}")
    if not (batch and sig and job):
        return _die("scancel", "only `scancel --batch --signal=SIG JOBID` is supported")
    pid = int((job_dir(job) / "batch.pid").read_text())
    os.kill(pid, getattr(signal, "SIG" + sig.upper().removeprefix("SIG")))
    return 0


# --- srun --------------------------------------------------------------------------------------
_SRUN_VALUE_OPTS = {"--nodes": "nodes", "-N": "nodes", "--ntasks": "ntasks", "-n": "ntasks",
                    "--ntasks-per-node": "ntasks_per_node", "--nodelist": "nodelist", "-w": "nodelist",
                    "--exclude": "exclude", "-x": "exclude", "--cpus-per-task": None, "--gpus-per-node": None,
                    "--export": None, "--kill-on-bad-exit": "kill_on_bad_exit", "-K": "kill_on_bad_exit",
                    "--wait": "wait", "-W": "wait"}
_SRUN_FLAGS = {"--overlap", "--unbuffered", "-u", "--label", "-l", "--kill-on-bad-exit", "-K"}


def _parse_srun(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    opts: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        a = argv[i]
        key, eq, value = a.partition("=")
        if key.startswith("--container"):
            raise ValueError("pyxis --container-* options are not supported by the fake srun")
        if a in _SRUN_FLAGS:
            if a in ("--kill-on-bad-exit", "-K"):
                opts["kill_on_bad_exit"] = "1"
            i += 1
            continue
        if key not in _SRUN_VALUE_OPTS:
            raise ValueError(f"unknown option {a}")
        if not eq:
            i += 1
            if i >= len(argv):
                raise ValueError(f"{a} needs a value")
            value = argv[i]
        name = _SRUN_VALUE_OPTS[key]
        if name:
            opts[name] = value
        i += 1
    if i >= len(argv):
        raise ValueError("no command")
    return opts, argv[i:]


def srun_main(argv: list[str]) -> int:
    try:
        opts, cmd = _parse_srun(argv)
    except ValueError as e:
        return _die("srun", str(e))
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return _die("srun", "not inside a job (SLURM_JOB_ID unset)")
    jd = job_dir(job_id)
    allocation = os.environ["SLURM_JOB_NODELIST"].split(",")
    chosen = allocation
    if "nodelist" in opts:
        wanted = opts["nodelist"].split(",")
        if not set(wanted) <= set(allocation):
            return _die("srun", f"--nodelist {wanted} not in the allocation {allocation}")
        chosen = [n for n in allocation if n in wanted]
    if "exclude" in opts:
        chosen = [n for n in chosen if n not in opts["exclude"].split(",")]
    n_nodes = int(opts.get("nodes", len(chosen)))
    if n_nodes > len(chosen) or n_nodes < 1:
        return _die("srun", f"--nodes={n_nodes} but only {chosen} are available")
    chosen = chosen[:n_nodes]
    per_node = int(opts.get("ntasks_per_node", 0)) or max(1, int(opts.get("ntasks", n_nodes)) // n_nodes)
    step = len((jd / "steps").read_text().splitlines()) if (jd / "steps").exists() else 0
    _append(jd / "steps", json.dumps({"nodes": chosen, "cmd": cmd}))

    tasks: list[subprocess.Popen] = []
    for node_id, node in enumerate(chosen):
        for local in range(per_node):
            env = {**os.environ, "SLURM_NODEID": str(node_id), "SLURM_PROCID": str(node_id * per_node + local),
                   "SLURM_LOCALID": str(local), "SLURMD_NODENAME": node, "SLURM_STEPID": str(step),
                   "SLURM_STEP_NODELIST": ",".join(chosen), "SLURM_STEP_NUM_NODES": str(len(chosen)),
                   "SLURM_STEP_NUM_TASKS": str(len(chosen) * per_node)}
            p = subprocess.Popen(cmd, env=env, start_new_session=True)
            _append(jd / "pgids", str(p.pid))
            tasks.append(p)

    def forward(signum: int, frame: object) -> None:
        for p in tasks:
            try:
                os.killpg(p.pid, signum)
            except ProcessLookupError:
                pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    rcs: dict[int, int] = {}
    kill_at = float("inf")
    try:
        while len(rcs) < len(tasks):
            for i, p in enumerate(tasks):
                if i not in rcs and p.poll() is not None:
                    rcs[i] = p.returncode if p.returncode >= 0 else 128 - p.returncode
                    if rcs[i] != 0 and opts.get("kill_on_bad_exit") == "1":
                        kill_at = 0.0  # SLURM's "bad exit": the step goes at once
                    elif int(opts.get("wait", "0")):  # --wait=S: the rest get S seconds after the first exit
                        kill_at = min(kill_at, time.monotonic() + int(opts["wait"]))
            if time.monotonic() >= kill_at:
                for q in tasks:
                    if q.poll() is None:
                        os.killpg(q.pid, signal.SIGKILL)
            time.sleep(0.1)
    finally:
        for p in tasks:  # a finished step leaves nothing behind (slurmstepd cleans its cgroup)
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return max(rcs.values())


def main() -> int:
    tool = os.path.basename(sys.argv[0])
    if tool == "_fakeslurm.py" and sys.argv[1:2] == ["controller"]:
        return controller_main(sys.argv[2])
    mains = {"sbatch": sbatch_main, "srun": srun_main, "scontrol": scontrol_main, "scancel": scancel_main}
    if tool not in mains:
        return _die(tool, "unknown fake tool")
    return mains[tool](sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
