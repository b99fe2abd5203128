"""Jars from Maven Central, resolved by Maven from a pom of ours into qactl's cache.

Maven's own repository (``~/.m2``) is the download cache; the copy under ``cache_dir`` is what
processes put on their classpath. A marker file written after a complete copy lets later runs
skip Maven entirely (no JVM start, no network).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path

from qactl.errors import PrerequisiteError, ProvisionError

MARKER = ".qactl-complete"


def asset(*parts: str) -> Path:
    """Path of a file shipped in ``qactl/runtime/assets``."""
    return Path(str(resources.files("qactl.runtime").joinpath("assets", *parts)))


def _fingerprint(pom: Path, properties: Mapping[str, str]) -> str:
    digest = hashlib.sha256(pom.read_bytes())
    digest.update(json.dumps(dict(sorted(properties.items()))).encode())
    return digest.hexdigest()


def is_complete(dest: Path, pom: Path, properties: Mapping[str, str]) -> bool:
    try:
        return (dest / MARKER).read_text().strip() == _fingerprint(pom, properties)
    except OSError:
        return False


def maven_command() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise PrerequisiteError("Maven is not installed: apt-get install -y maven")
    return mvn


def copy_dependencies(
    pom: Path,
    dest: Path,
    properties: Mapping[str, str],
    report: Callable[[str], None] = lambda _: None,
    timeout: float = 900.0,
) -> bool:
    """Make ``dest`` hold the runtime dependencies of ``pom``; True if Maven had to run.

    The copy goes to a temporary sibling first and is renamed into place, so a concurrent
    qactl or an interrupted download never leaves a half-filled ``dest`` that looks complete.
    """
    if is_complete(dest, pom, properties):
        return False
    mvn = maven_command()
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    argv = [
        mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(pom),
        "dependency:copy-dependencies", "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
        *(f"-D{key}={value}" for key, value in properties.items()),
    ]  # fmt: skip
    report(f"resolving {pom.parent.name} jars with Maven (first run downloads from Maven Central)")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise ProvisionError(f"Maven could not resolve {pom}:\n{tail}\ncommand: {' '.join(argv)}")
        (staging / MARKER).write_text(_fingerprint(pom, properties))
        if is_complete(dest, pom, properties):
            return True  # another qactl finished the same copy meanwhile; keep theirs (in use)
        if dest.exists():
            shutil.rmtree(dest)  # an older or partial copy
        try:
            staging.rename(dest)
        except OSError:
            # Another qactl completed the same copy first: theirs is as good as ours.
            if not is_complete(dest, pom, properties):
                raise
    except subprocess.TimeoutExpired as exc:
        raise ProvisionError(f"Maven did not finish within {timeout:.0f}s resolving {pom}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True
