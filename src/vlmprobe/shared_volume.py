"""One data volume, written by steps that run as different users.

The GPU pods run as uid 10001 and ``sample_keys``/``publish`` as Airflow's uid 50000; both
carry one shared group (the pods' ``fsGroup``, a supplemental group of the Airflow
components; ``helm/``). For each to replace and delete the other's files, every file and
folder a step creates must be writable by that group:

- :func:`share_with_group` sets the process umask to ``002`` (group-writable files and
  folders), once at the start of every step (``vlmprobe.cli.main``, ``vlmprobe.tasks``);
- folders are setgid (``chmod g+s``): what is created inside gets the folder's group, not the
  creator's primary group, and subfolders inherit the bit. Kubernetes sets it on the volume's
  root when it applies ``fsGroup``; :func:`make_shared_dir` does it for a local folder.

Object stores (gs://, s3://) have no POSIX permissions; there the umask changes nothing.
"""

from __future__ import annotations

import os
import stat

SHARED_UMASK = 0o002


def share_with_group() -> int:
    """Make files and folders this process creates group-writable; returns the previous umask.

    Only widens to the group: a stricter "other" part of the current umask is kept.
    """
    previous = os.umask(SHARED_UMASK)
    os.umask(previous & ~0o070 | SHARED_UMASK)
    return previous


def make_shared_dir(path: str, group: int | None = None) -> None:
    """Create ``path`` (and parents) as a group-writable setgid folder, owned by ``group`` if given.

    Safe to rerun. Changing the group needs ownership of the folder (or root).
    """
    os.makedirs(path, exist_ok=True)
    if group is not None and os.stat(path).st_gid != group:
        os.chown(path, -1, group)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    wanted = mode | stat.S_ISGID | stat.S_IRWXG
    if wanted != mode:
        os.chmod(path, wanted)
