"""A throw-away single-node SLURM on this machine, for the SLURM end-to-end test.

Debian packages ``slurmctld slurmd slurm-client munge`` (``.ci/slurm-setup.sh`` installs them) and
root are needed. ``LocalSlurm`` writes ``/etc/slurm/slurm.conf`` (and ``gres.conf``) for this host
(node line from ``slurmd -C``), starts munged (unless one already answers), slurmctld and slurmd,
waits until the node is idle, and on ``stop()`` cancels what is left, stops the daemons by their
pid files and removes everything it wrote. State, spool, logs and pid files live in a private
folder, so every start is a fresh cluster with no old jobs.

The config has to be at the default path: the SLURM executor plugin runs each job's command with
``srun`` from an environment without ``SLURM_CONF``. A config file that this module did not write
is never touched (``missing_requirements`` then gives the reason).

The node advertises ``fake_gpus`` count-only GPUs (gres without device files) so that jobs that
ask for ``--gpus=N`` are scheduled on a machine without GPUs; the job then sees no CUDA device.
"""
from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONF_DIR = Path("/etc/slurm")
SLURM_CONF = CONF_DIR / "slurm.conf"
GRES_CONF = CONF_DIR / "gres.conf"
MARKER = "# written by flare tests/workflow/slurm_cluster.py"
MUNGE_RUN = Path("/run/munge")
MUNGE_PID = MUNGE_RUN / "munged.pid"
MUNGE_KEY = Path("/etc/munge/munge.key")
DEBIAN_PACKAGES = "slurmctld slurmd slurm-client munge"
# programs -> the Debian package that has them
PROGRAMS = {
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "munged": "munge",
    "munge": "munge",
    "unmunge": "munge",
    "sbatch": "slurm-client",
    "srun": "slurm-client",
    "squeue": "slurm-client",
    "sinfo": "slurm-client",
    "scancel": "slurm-client",
    "scontrol": "slurm-client",
}
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"])


def which(program: str) -> str | None:
    return shutil.which(program, path=SEARCH_PATH)


def _ours(path: Path) -> bool:
    try:
        return path.read_text().startswith(MARKER)
    except OSError:
        return False


def missing_requirements() -> str | None:
    """Why a local SLURM cannot be started here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return f"a local SLURM needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "starting a local SLURM (munged, slurmctld, slurmd) needs root"
    missing = [p for p in PROGRAMS if which(p) is None]
    if missing:
        packages = sorted({PROGRAMS[p] for p in missing})
        return (f"SLURM/munge programs not found: {', '.join(missing)} (Debian packages {' '.join(packages)}; "
                f"run .ci/slurm-setup.sh or apt-get install {DEBIAN_PACKAGES})")
    for user in ("slurm", "munge"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"user {user!r} does not exist (the Debian packages create it; reinstall {DEBIAN_PACKAGES})"
    if not MUNGE_KEY.exists():
        return f"{MUNGE_KEY} is missing (the munge package creates it; reinstall munge)"
    if SLURM_CONF.exists() and not _ours(SLURM_CONF):
        return f"{SLURM_CONF} exists and was not written by this test; not touching a real SLURM setup"
    if GRES_CONF.exists() and not _ours(GRES_CONF):
        return f"{GRES_CONF} exists and was not written by this test; not touching a real SLURM setup"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "the Snakemake SLURM executor is not installed (pip install snakemake-executor-plugin-slurm)"
    return None


def node_line(fake_gpus: int = 0) -> str:
    """This host's NodeName line from ``slurmd -C`` (CPUs, sockets, cores, RealMemory), ready for slurm.conf."""
    out = subprocess.run([which("slurmd"), "-C"], capture_output=True, text=True, check=True, timeout=30).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("NodeName="))
    words = line.split()
    host = words[0].split("=", 1)[1]
    if host != socket.gethostname().split(".")[0]:
        raise RuntimeError(f"slurmd -C names node {host!r} but hostname is {socket.gethostname()!r}")
    words.insert(1, "NodeAddr=127.0.0.1")
    if fake_gpus:
        words.append(f"Gres=gpu:{fake_gpus}")
    return " ".join(words + ["State=UNKNOWN"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(host: str, node: str, base: Path, fake_gpus: int = 0) -> str:
    """A minimal single-node slurm.conf; state, spool, logs and pid files under ``base``."""
    ctld_port, slurmd_port = _free_port(), _free_port()
    lines = [
        MARKER,
        "ClusterName=local",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "SlurmUser=slurm",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"StateSaveLocation={base / 'state'}",
        f"SlurmdSpoolDir={base / 'spool'}",
        f"SlurmctldPidFile={base / 'slurmctld.pid'}",
        f"SlurmdPidFile={base / 'slurmd.pid'}",
        f"SlurmctldLogFile={base / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={base / 'log' / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "ReturnToService=2",
        # finished jobs stay visible to squeue/scontrol this long: the executor's squeue status
        # check needs it >= 3 x its status-check wait
        "MinJobAge=300",
        "MailProg=/bin/true",
    ]
    if fake_gpus:
        lines.append("GresTypes=gpu")
    lines += [node, f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""]
    return "\n".join(lines)


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is gone for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def stop_pid_file(path: Path, timeout: float = 15.0) -> None:
    """SIGTERM the process named in a pid file, SIGKILL it after ``timeout`` s."""
    pid = _pid(path)
    if pid is None or not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
            break
        time.sleep(0.2)


class LocalSlurm:
    """One-node SLURM (partition ``debug``) for a test; use as a context manager or start()/stop()."""

    partition = "debug"

    def __init__(self, fake_gpus: int = 2):
        self.fake_gpus = fake_gpus
        self.host = socket.gethostname().split(".")[0]
        self.base: Path | None = None
        self.started_munge = False
        self.made_munge_run = False
        self.wrote_conf = False

    # -- paths
    @property
    def log_dir(self) -> Path:
        return self.base / "log"

    def log(self, name: str) -> str:
        try:
            return (self.log_dir / f"{name}.log").read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    # -- helpers
    def _run(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return subprocess.run([which(args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout)

    def _munge_answers(self) -> bool:
        try:
            cred = subprocess.run([which("munge"), "-n"], capture_output=True, timeout=10)
            if cred.returncode:
                return False
            return subprocess.run([which("unmunge")], input=cred.stdout, capture_output=True,
                                  timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def _start_munge(self) -> None:
        if self._munge_answers():
            return  # someone else's munged: use it, leave it running
        munge = pwd.getpwnam("munge")
        self.made_munge_run = not MUNGE_RUN.exists()
        MUNGE_RUN.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chown(MUNGE_RUN, munge.pw_uid, munge.pw_gid)
        for folder in (Path("/var/log/munge"), Path("/var/lib/munge")):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chown(folder, munge.pw_uid, munge.pw_gid)
        result = subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", which("munged")],
                                capture_output=True, text=True, timeout=30)
        if result.returncode:
            raise RuntimeError(f"munged failed to start: {result.stdout}{result.stderr}")
        self.started_munge = True
        self._wait(self._munge_answers, 15, "munged to answer")

    def _wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}\n"
                                   f"--- slurmctld.log\n{self.log('slurmctld')[-3000:]}\n"
                                   f"--- slurmd.log\n{self.log('slurmd')[-3000:]}")
            time.sleep(0.3)

    def node_state(self) -> str:
        result = self._run("sinfo", "-h", "-o", "%T")
        return result.stdout.strip() if result.returncode == 0 else ""

    # -- lifecycle
    def start(self, timeout: float = 60.0) -> "LocalSlurm":
        reason = missing_requirements()
        if reason:
            raise RuntimeError(reason)
        slurm = pwd.getpwnam("slurm")
        self.base = Path(tempfile.mkdtemp(prefix="flare-slurm-"))
        self.base.chmod(0o755)  # slurmctld runs as the slurm user and must reach its state folder
        for name in ("state", "spool", "log"):
            (self.base / name).mkdir()
            os.chown(self.base / name, slurm.pw_uid, slurm.pw_gid)

        CONF_DIR.mkdir(parents=True, exist_ok=True)
        self.wrote_conf = True
        SLURM_CONF.write_text(slurm_conf(self.host, node_line(self.fake_gpus), self.base, self.fake_gpus))
        if self.fake_gpus:
            # stand-in device files: slurmd wants one file per GPU, a plain file will do
            devices = self.base / "dev"
            devices.mkdir()
            for k in range(self.fake_gpus):
                (devices / f"gpu{k}").touch()
            GRES_CONF.write_text(f"{MARKER}\nNodeName={self.host} Name=gpu File={devices}/gpu[0-{self.fake_gpus - 1}]\n")
        elif GRES_CONF.exists():
            GRES_CONF.unlink()  # ours (checked by missing_requirements), from an earlier run

        self._start_munge()
        for daemon in ("slurmctld", "slurmd"):
            result = self._run(daemon, timeout=30)  # both fork into the background
            if result.returncode:
                raise RuntimeError(f"{daemon} failed to start: {result.stdout}{result.stderr}\n"
                                   f"{self.log(daemon)[-3000:]}")
        self._wait(lambda: self.node_state() == "idle", timeout, "the node to become idle")
        return self

    def cancel_all(self) -> None:
        result = self._run("squeue", "-h", "-o", "%i")
        ids = result.stdout.split() if result.returncode == 0 else []
        if ids:
            self._run("scancel", *ids)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                left = self._run("squeue", "-h", "-t", "PD,R,CG", "-o", "%i").stdout.split()
                if not left:
                    break
                time.sleep(0.5)

    def stop(self) -> None:
        """Stops what start() started, even after a partial start; safe to call twice."""
        if self.base is not None:
            try:
                self.cancel_all()
            except (OSError, subprocess.SubprocessError):
                pass
            stop_pid_file(self.base / "slurmd.pid")
            stop_pid_file(self.base / "slurmctld.pid")
        if self.started_munge:
            stop_pid_file(MUNGE_PID)
            self.started_munge = False
            if self.made_munge_run:
                shutil.rmtree(MUNGE_RUN, ignore_errors=True)
                self.made_munge_run = False
        if self.wrote_conf:
            for path in (SLURM_CONF, GRES_CONF):
                if _ours(path):
                    path.unlink()
            self.wrote_conf = False
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    def queue(self) -> list[tuple[str, str, str]]:
        """(job id, state, reason) of the jobs that have not finished."""
        result = self._run("squeue", "-h", "-t", "PD,R,CG,CF", "-o", "%i|%T|%r")
        return [tuple(line.split("|", 2)) for line in result.stdout.splitlines() if line.count("|") == 2]

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still remembers (finished ones for MinJobAge), as ``scontrol -o`` fields."""
        result = self._run("scontrol", "show", "job", "-o")
        records = []
        for line in result.stdout.splitlines():
            fields = {}
            for word in line.split():
                key, sep, value = word.partition("=")
                if sep:
                    fields[key] = value
            if fields:
                records.append(fields)
        return records

    def __enter__(self) -> "LocalSlurm":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
