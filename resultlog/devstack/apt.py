"""Installing the Debian packages the local stack needs (Redis, PostgreSQL)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from resultlog.devstack import process
from resultlog.devstack.process import Out
from resultlog.errors import DevStackError

# Debian's maintainer scripts start a freshly installed server on its default port
# (invoke-rc.d). The local stack runs its own instances, so while installing we ask
# invoke-rc.d not to start anything, the way container images do: policy-rc.d exit 101.
_POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


def install(packages: Sequence[str], *, log_path: Path, out: Out) -> None:
    """``apt-get update`` then ``apt-get install -y`` the packages, as root.

    Anyone else gets a DevStackError that says what to install.
    """
    if not packages:
        return
    names = " ".join(packages)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise DevStackError(
            f"the local stack needs the Debian package(s) {names}; install them with "
            f"`sudo apt-get update && sudo apt-get install -y {names}` "
            f"(resultlog installs them itself only when run as root on Debian/Ubuntu)"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    started = time.monotonic()
    last = [started]

    def progress(line: str) -> None:
        # apt prints "Get:n ..." per download and "Setting up pkg ..." per package.
        now = time.monotonic()
        if line.startswith("Setting up ") or now - last[0] > 5:
            last[0] = now
            out(f"apt      | {line[:110]}")

    out(f"apt      | installing {names} (apt-get update, then apt-get install -y); log {log_path}")
    placed_policy = False
    if not _POLICY_RC_D.exists():
        _POLICY_RC_D.write_text("#!/bin/sh\n# resultlog dev up: do not start services\nexit 101\n")
        _POLICY_RC_D.chmod(0o755)
        placed_policy = True
    try:
        process.run_logged(
            ["apt-get", "update"], log_path=log_path, what="apt-get update", env=env,
            on_line=progress,
        )
        process.run_logged(
            ["apt-get", "install", "-y", "--no-install-recommends", "--no-upgrade", *packages],
            log_path=log_path,
            what=f"apt-get install {names}",
            env=env,
            on_line=progress,
        )
    finally:
        if placed_policy:
            _POLICY_RC_D.unlink(missing_ok=True)
    out(f"apt      | installed {names} in {time.monotonic() - started:.1f} s")
