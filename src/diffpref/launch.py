"""Training processes: which one this is, and how ``diffpref train`` becomes N of them.

With ``train.num_processes: N > 1`` the CLI re-executes itself under ``accelerate launch``
(PyTorch's elastic launcher underneath): N processes, one GPU each, or N CPU processes talking
over gloo; so the Snakefile and dvc.yaml run the same ``diffpref train`` command whatever N is.
The launcher tells each process its rank in the environment; only rank 0 writes (adapter,
checkpoints, MLflow record, logs). No torch here: the CLI decides before importing anything
heavy, and the MLflow writer process imports this too.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import NoReturn

from diffpref import env

LAUNCHER = env.LAUNCHER  # set by relaunch: the pid the launcher keeps across exec


def rank() -> int:
    """This process's rank in a launched group; 0 outside one."""
    return env.rank()


def is_main() -> bool:
    return rank() == 0


def is_launched() -> bool:
    """Inside a process started by a distributed launcher (``accelerate launch``, torchrun)."""
    return env.world_size() is not None


def relaunch(argv: list[str], num_processes: int) -> NoReturn:
    """Replace this process by ``accelerate launch`` running ``diffpref <argv>`` N times.

    ``exec``, not a child: a signal to the job (Snakemake, SLURM) reaches the launcher, which
    passes it to the workers. ``--multi_gpu`` picks the launcher that spawns the N processes;
    on CPU each worker's ``Accelerator(cpu=True)`` joins over gloo. Port 0: a free port, so
    parallel jobs on one machine never collide. Precision is the workers' own
    (``train.mixed_precision``); ``no`` here only keeps the launcher from guessing.
    """
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
        "--gpu_ids", "all", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", "0",
        "-m", "diffpref.cli", *argv,
    ]  # fmt: skip
    os.environ[LAUNCHER] = str(os.getpid())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)


def die_with_launcher() -> None:
    """In a worker of :func:`relaunch`: be killed when the launcher dies. PyTorch's launcher
    starts each worker in its own session, so a launcher killed outright (SIGKILL, the OOM
    killer) would leave workers that go on training and write results behind its back."""
    launcher = env.launcher_pid()
    if launcher is None or not is_launched() or sys.platform != "linux":
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != launcher:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)
