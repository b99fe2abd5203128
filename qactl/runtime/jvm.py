"""JVM start-up help shared by Kafka and Flink: application class-data sharing (AppCDS).

Most of a broker's or job manager's start is loading and verifying some ten thousand classes.
The first run of a JVM writes the classes it loaded to an archive when it exits
(``-XX:ArchiveClassesAtExit``); later runs map that archive (``-XX:SharedArchiveFile``) and
start with about half the CPU (measured: Kafka 15 -> 8 CPU s). The archive is only valid for
the same JDK and class path, so its name carries a fingerprint of both: a new JDK or new jars
simply make a new archive. CDS's own warnings (classes it skips) are silenced.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterable
from pathlib import Path

QUIET = "-Xlog:cds*=off"


def java_fingerprint() -> str:
    java = shutil.which("java")
    if java is None:
        return "no-java"
    real = Path(java).resolve()
    stat = real.stat()
    return f"{real}:{stat.st_size}:{stat.st_mtime_ns}"


def archive_path(directory: Path, name: str, class_path: Iterable[Path | str]) -> Path:
    digest = hashlib.sha256(java_fingerprint().encode())
    for entry in class_path:
        digest.update(str(entry).encode() + b"\0")
    return directory / f"{name}-{digest.hexdigest()[:12]}.jsa"


def cds_flags(directory: Path, name: str, class_path: Iterable[Path | str]) -> list[str]:
    """Flags that use this JVM's archive, or create it at exit when there is none yet."""
    archive = archive_path(directory, name, class_path)
    if archive.is_file() and archive.stat().st_size > 0:
        return [f"-XX:SharedArchiveFile={archive}", QUIET]
    return [f"-XX:ArchiveClassesAtExit={archive}", QUIET]


def prepare_archives(directory: Path, name: str, class_path: Iterable[Path | str]) -> None:
    """Make ``directory`` and drop archives of an older JDK or class path (at provisioning)."""
    directory.mkdir(parents=True, exist_ok=True)
    keep = archive_path(directory, name, class_path)
    for stale in directory.glob(f"{name}-*.jsa"):
        if stale != keep:
            stale.unlink(missing_ok=True)
