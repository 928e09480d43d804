"""Which SQLite journal a queue file gets: WAL on local disks, the rollback journal on shared ones.

SQLite's WAL mode keeps its index in a memory-mapped ``-shm`` file, which only works when every
process using the database runs on the same host; on NFS, CephFS, Lustre, ... a ``status`` on the
login node and a ``run`` on a compute node would each see their own index and can corrupt the
queue. The rollback journal (``journal_mode=DELETE``) only needs POSIX ``fcntl`` locks, which
network file systems pass to the server. So the queue looks up the file system under its file:

* Linux: the mount table (``/proc/self/mountinfo``, else ``/proc/mounts``); the mount whose mount
  point is the longest path prefix of the queue's resolved folder wins (the last one mounted on
  the same point, when several are).
* Elsewhere, or when the table cannot be read: assume a local disk.

``DRMIME_BATCH_QUEUE_JOURNAL`` overrides the choice: ``auto`` (the default), ``wal`` or ``delete``.
Set it to ``delete`` on every host when the detection is wrong for you, e.g. a queue on a file
server's own disk that other hosts reach over NFS (the server sees ``ext4``).

File-system types treated as shared (:data:`NETWORK_FS_TYPES`): NFS (``nfs``, ``nfs4``), SMB
(``cifs``, ``smb3``, ``smbfs``), CephFS (``ceph``, ``fuse.cephfs``), Lustre, GPFS / Spectrum
Scale, BeeGFS, GlusterFS, OrangeFS / PVFS2, Panasas (``panfs``), AFS, the shared-disk cluster file
systems OCFS2 and GFS2, 9p (WSL, VMs), and FUSE file systems reaching another machine (sshfs, s3fs,
gcsfuse, rclone, JuiceFS, ...). Any other ``fuse.*`` type is treated as shared too unless it is a
known local one (:data:`LOCAL_FUSE_TYPES`): the rollback journal is safe everywhere, WAL is not.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from drmime_batch.errors import QueueError

__all__ = [
    "JOURNAL_ENV",
    "LOCAL_FUSE_TYPES",
    "NETWORK_FS_TYPES",
    "choose_journal_mode",
    "filesystem_type",
    "is_network_fs",
    "parse_mount_table",
]

#: Environment variable overriding the journal choice: ``auto``, ``wal`` or ``delete``.
JOURNAL_ENV = "DRMIME_BATCH_QUEUE_JOURNAL"

NETWORK_FS_TYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "fuse.cephfs", "fuse.ceph-fuse", "lustre", "gpfs",
    "beegfs", "glusterfs", "fuse.glusterfs", "pvfs2", "orangefs", "panfs", "afs", "openafs", "ocfs2",
    "gfs2", "9p", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone", "fuse.juicefs", "juicefs",
    "fuse.weka", "wekafs", "davfs", "fuse.davfs2", "fuse.mfs", "fuse.moosefs", "fuse.lizardfs",
})
#: FUSE types known to be local (everything else named ``fuse.*`` counts as shared).
LOCAL_FUSE_TYPES = frozenset({"fuse.fuse-overlayfs", "fuseblk", "fuse.lxcfs", "fuse.portal", "fuse.gvfsd-fuse",
                              "fuse.squashfuse", "fuse.appimaged"})

_MOUNT_TABLES = ("/proc/self/mountinfo", "/proc/mounts")


def _unescape(field: str) -> str:
    r"""Undo the kernel's octal escapes in a mount point (``\040`` is a space)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit() and len(field[i + 1:i + 4]) == 3:
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mount_table(text: str) -> list[tuple[str, str]]:
    """``(mount point, file-system type)`` of each line of a Linux mount table, in table order.

    Reads both layouts: ``/proc/self/mountinfo`` (``... MOUNT_POINT OPTIONS [TAGS] - TYPE SOURCE
    ...``) and ``/proc/mounts`` (``SOURCE MOUNT_POINT TYPE OPTIONS 0 0``); lines of neither are
    skipped.

    Examples
    --------
    >>> parse_mount_table("36 25 0:32 / /project rw - nfs4 srv:/p rw\\nsrv:/h /home nfs rw 0 0\\n")
    [('/project', 'nfs4'), ('/home', 'nfs')]
    """
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if " - " in line and len(fields) >= 7:  # mountinfo
            sep = fields.index("-", 6) if "-" in fields[6:] else -1
            if sep < 0 or sep + 1 >= len(fields):
                continue
            mounts.append((_unescape(fields[4]), fields[sep + 1]))
        elif len(fields) >= 3 and fields[1].startswith("/"):  # /proc/mounts
            mounts.append((_unescape(fields[1]), fields[2]))
    return mounts


def _existing_dir(path: Path) -> Path:
    """The resolved folder of ``path``, or of its nearest existing ancestor (the queue may not exist yet)."""
    folder = Path(os.path.abspath(path)).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder.resolve()


def filesystem_type(path: str | os.PathLike[str], mount_table: str | None = None) -> str | None:
    """File-system type of the folder holding ``path`` (``None`` when unknown).

    Parameters
    ----------
    path : str or path-like
        A file (it need not exist yet); symbolic links in its folder are resolved.
    mount_table : str, optional
        The text of a mount table (for tests); default: read ``/proc/self/mountinfo`` or
        ``/proc/mounts``.

    Examples
    --------
    >>> filesystem_type("/project/lab/q.sqlite", "a /project/lab nfs4 rw 0 0\\nb / ext4 rw 0 0\\n")
    'nfs4'
    """
    if mount_table is None:
        for candidate in _MOUNT_TABLES:
            try:
                mount_table = Path(candidate).read_text(errors="replace")
                break
            except OSError:
                continue
        else:
            return None
        folder = _existing_dir(Path(path))
    else:  # a given table describes another machine: do not look at this one's folders
        folder = Path(os.path.normpath(os.path.abspath(Path(path).parent)))
    best, best_len = None, -1
    for mount_point, fstype in parse_mount_table(mount_table):
        mp = Path(os.path.normpath(mount_point))
        if (folder == mp or mp in folder.parents) and len(mp.parts) >= best_len:
            best, best_len = fstype, len(mp.parts)  # ">=": a later mount on the same point hides earlier ones
    return best


def is_network_fs(fstype: str | None) -> bool:
    """True for file systems shared between hosts (see the module docstring).

    Examples
    --------
    >>> is_network_fs("nfs4"), is_network_fs("ext4"), is_network_fs("fuse.sshfs"), is_network_fs(None)
    (True, False, True, False)
    """
    if not fstype:
        return False
    fstype = fstype.lower()
    if fstype in NETWORK_FS_TYPES:
        return True
    return fstype.startswith("fuse.") and fstype not in LOCAL_FUSE_TYPES


def choose_journal_mode(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    mount_table: str | None = None,
) -> tuple[str, str]:
    """The journal mode a queue file at ``path`` should use, and why.

    Parameters
    ----------
    path : str or path-like
        The queue file.
    env : mapping, optional
        Where to read :data:`JOURNAL_ENV` (default ``os.environ``).
    mount_table : str, optional
        Mount-table text to use instead of this machine's (tests).

    Returns
    -------
    mode : {"wal", "delete"}
    reason : str
        One line for messages and logs.

    Raises
    ------
    QueueError
        :data:`JOURNAL_ENV` holds something other than ``auto``, ``wal`` or ``delete``.

    Examples
    --------
    >>> choose_journal_mode("/scratch/q.sqlite", env={}, mount_table="s /scratch lustre rw 0 0")
    ('delete', 'the queue is on a lustre file system (shared between hosts)')
    >>> choose_journal_mode("/scratch/q.sqlite", env={"DRMIME_BATCH_QUEUE_JOURNAL": "wal"}, mount_table="")
    ('wal', 'DRMIME_BATCH_QUEUE_JOURNAL=wal')
    """
    env = os.environ if env is None else env
    wanted = (env.get(JOURNAL_ENV) or "auto").strip().lower()
    if wanted in ("wal", "delete"):
        return wanted, f"{JOURNAL_ENV}={wanted}"
    if wanted != "auto":
        raise QueueError(f"{JOURNAL_ENV}={env.get(JOURNAL_ENV)!r} for queue {path}: use auto, wal or delete")
    if mount_table is None and not sys.platform.startswith("linux"):
        return "wal", "no mount table on this platform: assumed a local disk"
    fstype = filesystem_type(path, mount_table)
    if is_network_fs(fstype):
        return "delete", f"the queue is on a {fstype} file system (shared between hosts)"
    return "wal", f"the queue is on a {fstype or 'local'} file system"
