"""System programs some tests drive, and installing them when they are missing.

The README's test command is the whole set-up: on a fresh Debian machine it must bring what the
tests need.  Python packages come from the ``dev`` extra; these programs come from the system
package manager, installed once per session by :func:`ensure` (root and apt-get needed; without
them the tests that need a program fail with a message naming the package).
"""

from __future__ import annotations

import os
import shutil
import subprocess

# program on PATH -> Debian package that provides it
PROGRAMS = {
    "chromium": "chromium",      # the status page test (Playwright drives the system browser)
    "curl": "curl",              # the multipart upload test
    "promtool": "prometheus",    # alert rule checks and tests
    "prometheus": "prometheus",  # the real-Prometheus scrape test
    "kubectl": "kubectl",        # renders deploy/kubernetes with its built-in kustomize
}


def missing() -> list[str]:
    """Debian packages whose programs are not on PATH."""
    return sorted({package for program, package in PROGRAMS.items() if shutil.which(program) is None})


def ensure() -> str | None:
    """Install missing packages with apt-get; return a note when something could not be installed."""
    packages = missing()
    if not packages:
        return None
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return f"missing system packages {', '.join(packages)}: install them (apt-get install {' '.join(packages)})"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = (["apt-get", "update", "-qq"],
             ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages])
    for step in steps:
        result = subprocess.run(step, env=env, capture_output=True, text=True, timeout=1200)
        if result.returncode != 0:
            return f"`{' '.join(step)}` failed: {result.stderr.strip()[-500:]}"
    still = missing()
    return f"still missing after apt-get: {', '.join(still)}" if still else None
