"""The package version and the git commit it was built from (`legistra --version`, the registry's codeVersion)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from legistra import __version__

ENV_GIT_SHA = "LEGISTRA_GIT_SHA"  # baked into the images at build time (build argument GIT_SHA)


def git_sha() -> str:
    """The commit: the image's LEGISTRA_GIT_SHA, else the checkout's HEAD, else ''."""
    sha = os.environ.get(ENV_GIT_SHA, "")
    if sha and sha != "unknown":
        return sha
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def code_version() -> str:
    """`<version>+<sha>` (PEP 440 local label), or the version alone when no commit is known."""
    sha = git_sha()
    return f"{__version__}+{sha}" if sha else __version__
