"""Where a run came from: nanoact's version and commit, PyTorch's version, the device, host and user."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

from nanoact.tracking import schema as S


def git_commit() -> str:
    """The commit of the nanoact checkout, or 'unknown' for an installed copy."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
            text=True, timeout=5,
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance_tags(device: Any) -> dict[str, str]:
    import torch

    import nanoact

    dev = str(device)
    if getattr(device, "type", "") == "cuda":
        dev = f"{dev} ({torch.cuda.get_device_name(device)})"
    else:
        dev = f"{dev} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    commit = git_commit()
    tags = {
        S.VERSION: nanoact.__version__,
        S.TORCH_VERSION: torch.__version__,
        S.GIT_COMMIT: commit,
        S.DEVICE: dev,
        S.HOST: platform.node(),
        S.USER: _user(),
    }
    if commit != "unknown":
        tags[S.SOURCE_COMMIT] = commit  # the UI's "Source" column links the commit
    return tags


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"
