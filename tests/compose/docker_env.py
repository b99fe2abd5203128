"""A Docker engine for the compose test: the running one, or dockerd started here and stopped after.

Debian's packages (docker.io, docker-compose, debootstrap) are installed when missing. The base
image is made without any registry (debootstrap --variant=minbase bookworm + docker import) and,
like the image layers, stays in Docker's data root for the next run on this machine; a run
never depends on finding them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.common.waiting import poll_until

DOCKER = "/usr/bin/docker"  # Debian's CLI, the one that matches its dockerd
BASE_IMAGE = "qactl-base:bookworm"
PACKAGES = ("docker.io", "docker-compose", "debootstrap")


def run(*argv: str, timeout: float = 600, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:4])} ... exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
    return done


def install_packages() -> None:
    missing = [p for p in PACKAGES if run("dpkg-query", "-W", "-f=${Status}", p, check=False).stdout != "install ok installed"]
    if missing:
        run("apt-get", "update", "-qq", timeout=600)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing, timeout=1200, env=env)


def engine_answers() -> bool:
    return os.path.exists(DOCKER) and run(DOCKER, "info", check=False, timeout=30).returncode == 0


@contextmanager
def docker_engine(workdir: Path) -> Iterator[None]:
    """A Docker engine for the block; one started here is stopped after it (containerd with it)."""
    install_packages()
    if engine_answers():
        yield
        return
    pid_file = workdir / "dockerd.pid"
    log = open(workdir / "dockerd.log", "ab")
    daemon = subprocess.Popen(
        ["dockerd", "--storage-driver=overlay2", f"--pidfile={pid_file}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        if not poll_until(engine_answers, timeout=120, interval=1):
            raise AssertionError(f"dockerd did not answer; see {workdir / 'dockerd.log'}")
        yield
    finally:
        daemon.send_signal(signal.SIGTERM)  # it stops its containerd too
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(10)
        log.close()


def ensure_base_image() -> float:
    """The debootstrap base image; returns the seconds it took (0 when Docker still had it)."""
    if run(DOCKER, "image", "inspect", BASE_IMAGE, check=False).returncode == 0:
        return 0.0
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="qactl-debootstrap-"))
    try:
        run("debootstrap", "--variant=minbase", "bookworm", str(root), "http://deb.debian.org/debian", timeout=1800)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run([DOCKER, "import", "-", BASE_IMAGE], stdin=tar.stdout, capture_output=True, timeout=600)
        tar.wait()
        assert imported.returncode == 0, imported.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return time.monotonic() - started
