"""The virtualenv of the external-contract tests: tests/external/requirements.txt,
pinned, installed from PyPI into <build>/external-venv (outside the repository). Run
as a script it installs (ctest's fixture test external_venv, before the tests that use
it); ensure() installs when needed, then re-runs the calling script under that venv's
python. Where PyPI cannot be reached both exit 77 (ctest: skipped) saying so.

Usage: pyvenv.py BUILD_DIR"""
import hashlib
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REQUIREMENTS = os.path.join(HERE, "requirements.txt")


def install(build_dir):
    """Creates or refreshes the venv; returns its python."""
    venv = os.path.join(build_dir, "external-venv")
    python = os.path.join(venv, "bin", "python3")
    with open(REQUIREMENTS, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    stamp = os.path.join(venv, "requirements.sha256")
    fresh = os.path.exists(stamp) and open(stamp).read() == digest
    if not fresh:
        subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True)
        pip = subprocess.run([python, "-m", "pip", "install", "--disable-pip-version-check",
                              "--quiet", "-r", REQUIREMENTS], capture_output=True, text=True,
                             timeout=600)
        if pip.returncode != 0:
            print("cannot install tests/external/requirements.txt from PyPI (no network?): "
                  f"skipping\n{pip.stderr[-2000:]}", file=sys.stderr)
            sys.exit(77)
        with open(stamp, "w") as f:
            f.write(digest)
    return python


def ensure(build_dir):
    venv = os.path.join(build_dir, "external-venv")
    if os.path.realpath(sys.prefix) == os.path.realpath(venv):
        return  # already running inside it
    python = install(build_dir)
    os.execv(python, [python] + sys.argv)


if __name__ == "__main__":
    install(sys.argv[1])
    print("external-venv: ready")
