"""A real single-node SLURM cluster (munged, slurmctld, slurmd) for tests that submit jobs.

Everything lives under one state folder: the munge key, ``slurm.conf`` (found through
``SLURM_CONF``, so ``/etc/slurm`` is left alone), spool and logs. Only munge's socket has a short
folder of its own in the temp dir: munged wants every folder above its socket open to all
(pytest's are not), and socket paths are short. Inside a job the executor plugin's jobstep calls
``srun`` with ``SLURM_CONF`` stripped from the environment, so ``bin/srun`` (first on the
``PATH`` that ``sbatch --export=ALL`` hands to the job) puts it back.

The node has one fake GPU (a GRES backed by /dev/null): GPU requests are scheduled and counted
for real (the job gets ``CUDA_VISIBLE_DEVICES``; torch finds no GPU and the stage runs on the
CPU). The daemons run as root (as on the project's machines and in CI), in the foreground as
children of the test, on free ports, and stop when the ``with`` block ends, whatever happened.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

BINARIES = (
    "munged",
    "mungekey",
    "slurmctld",
    "slurmd",
    "sbatch",
    "squeue",
    "scontrol",
    "sinfo",
    "scancel",
)

CONF = """\
ClusterName=diffpref-test
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=3600
GresTypes=gpu
NodeName={host} CPUs={cpus} RealMemory={memory} Gres=gpu:fake:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def missing() -> list[str]:
    """The SLURM and munge programs this machine lacks (``install.sh --tests`` brings them)."""
    return [b for b in BINARIES if shutil.which(b) is None]


@dataclass
class Cluster:
    state: Path
    env: dict[str, str]  # what a client needs: SLURM_CONF, and bin/ (the srun wrapper) on PATH

    def jobs(self) -> dict[str, dict[str, str]]:
        """Every job the controller knows (finished ones for MinJobAge, an hour), by id, as
        ``scontrol show job`` has it (JobState, ExitCode, Comment, TimeLimit, TRES, ...)."""
        out = self.run("scontrol", "show", "job", "--oneliner")
        jobs = [
            dict(kv.split("=", 1) for kv in line.split() if "=" in kv) for line in out.splitlines()
        ]
        return {j["JobId"]: j for j in jobs if "JobId" in j}

    def run(self, *cmd: str) -> str:
        """A SLURM client command against this cluster; its stdout."""
        return subprocess.run(
            cmd, env=os.environ | self.env, capture_output=True, text=True, check=True
        ).stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node() -> tuple[int, int]:
    """This machine's CPUs and memory (MB) as slurmd sees them."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    fields = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
    return int(fields["CPUs"]), int(fields["RealMemory"])


def _start(stack: ExitStack, cmd: list[str], log: Path, env: dict[str, str]) -> None:
    """A daemon in the foreground, stopped (SIGTERM, then SIGKILL) when ``stack`` closes."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    stack.callback(stop)


def _wait(what: str, ready, timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
            raise RuntimeError(f"{what} not ready after {timeout:.0f} s\n{tails}")
        time.sleep(0.2)


@contextmanager
def cluster(state: Path, timeout: float = 30) -> Iterator[Cluster]:
    """Start munged, slurmctld and slurmd with all their state under ``state``; yield the
    cluster once its node is idle; cancel every job and stop the daemons on exit."""
    state.mkdir(parents=True)
    for d in ("munge", "ctld", "spool", "bin"):
        (state / d).mkdir()
    sockets = Path(tempfile.mkdtemp(prefix="munge-"))
    sockets.chmod(0o755)
    host = socket.gethostname().split(".")[0]
    cpus, memory = _node()
    conf = state / "slurm.conf"
    munge_socket = sockets / "munge.socket.2"
    conf.write_text(
        CONF.format(
            host=host,
            ctld_port=_free_port(),
            slurmd_port=_free_port(),
            munge_socket=munge_socket,
            state=state,
            cpus=cpus,
            memory=memory,
        )
    )
    (state / "gres.conf").write_text(f"NodeName={host} Name=gpu Type=fake File=/dev/null\n")
    srun = state / "bin" / "srun"
    srun.write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {shutil.which("srun")} "$@"\n')
    srun.chmod(0o755)
    env = {"SLURM_CONF": str(conf), "PATH": f"{state / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    full_env = os.environ | env
    key = state / "munge" / "munge.key"
    subprocess.run(["mungekey", "-c", "-k", str(key)], check=True, capture_output=True)
    logs = [state / n for n in ("munged.log", "slurmctld.log", "slurmd.log", "slurmd.out")]
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, sockets, ignore_errors=True)
        _start(
            stack,
            [
                "munged",
                "-F",
                f"--socket={munge_socket}",
                f"--key-file={key}",
                f"--pid-file={state / 'munge' / 'munged.pid'}",
                f"--log-file={state / 'munged.log'}",
                f"--seed-file={state / 'munge' / 'munged.seed'}",
            ],
            state / "munged.out",
            full_env,
        )
        _wait("munged", munge_socket.exists, timeout, logs)
        _start(stack, ["slurmctld", "-D", "-c", "-f", str(conf)], state / "ctld.out", full_env)
        _start(stack, ["slurmd", "-D", "-f", str(conf)], state / "slurmd.out", full_env)
        c = Cluster(state, env)

        def idle() -> bool:
            try:
                return c.run("sinfo", "-h", "-o", "%T").strip() == "idle"
            except subprocess.CalledProcessError:
                return False

        _wait("the SLURM node", idle, timeout, logs)
        stack.callback(_cancel_all, c)  # runs first: jobs end before their daemons
        yield c


def _cancel_all(c: Cluster, timeout: float = 30) -> None:
    """Cancel whatever is still queued or running and wait for it to leave the node."""
    c.run("scancel", f"--user={getpass.getuser()}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = c.run("squeue", "-h", "-t", "PD,R,CG,CF,S", "-o", "%i")
        if not active.strip():
            return
        time.sleep(0.5)
