"""The built wheel works on its own (issue 12): build it, install it with --no-deps in a fresh
venv, import it from there, and run the README's first block with it. Quick (seconds); runs
everywhere pip can fetch hatchling (the build backend) from its index."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

from test_docs_blocks import README

ROOT = Path(__file__).resolve().parent.parent


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False
    )


def test_the_wheel_installs_alone_and_runs_the_readme(tmp_path: Path) -> None:
    built = _pip("wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(ROOT))
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("oauth2_broker_mw-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "oauth2_broker_mw/py.typed" in names
    assert "oauth2_broker_mw/presets.toml" in names
    assert not any(n.startswith("tests/") for n in names)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    installed = _pip("install", "--no-deps", "--quiet", "--target", purelib, str(wheel))
    assert installed.returncode == 0, installed.stderr

    # The dependencies come from this interpreter's site-packages on PYTHONPATH (a .pth file
    # is not read from there, so this checkout's editable install stays out of sight).
    deps = sysconfig.get_paths()["purelib"]
    code = "import oauth2_broker_mw, sys; print(oauth2_broker_mw.__file__)\n" + README[0][3]
    done = subprocess.run(
        [str(python), "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": deps, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith(purelib)
