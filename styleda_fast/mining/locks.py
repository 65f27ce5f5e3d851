"""``OUT.lock``: one mining run per output file."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
from pathlib import Path

from styleda_fast.mining.config import MineError
from styleda_fast.mining.files import file_kind, shown


class OutputLock:
    """An exclusive ``fcntl.flock`` on ``OUT.lock``, holding ``"PID host"`` of its owner.

    The kernel drops the lock when the process dies, so a file left behind by a killed run is simply locked
    again. The file is removed on release (while still locked); a run that locked a file removed meanwhile sees
    another inode at the path and locks again. The path is opened without following a symbolic link, and only a
    regular file is used: a link (even a dangling one), a FIFO or a folder at the lock path is refused and left
    as it is, so the lock never writes anywhere but ``OUT.lock`` itself."""

    def __init__(self, out: Path):
        self.path = out.with_name(out.name + ".lock")
        self.fd: int | None = None

    def _refuse(self, mode: int) -> MineError:
        return MineError(
            f"--out: the lock path {shown(self.path)} is {file_kind(mode)}, not a regular file; "
            "remove it (the output's lock is OUT.lock, created by the run)"
        )

    def acquire(self) -> None:
        while True:
            with contextlib.suppress(FileNotFoundError):
                mode = os.lstat(self.path).st_mode
                if not stat.S_ISREG(mode):
                    raise self._refuse(mode)
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            try:
                fd = os.open(self.path, flags, 0o644)
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # a symbolic link appeared after the check
                    raise self._refuse(stat.S_IFLNK) from None
                raise MineError(
                    f"--out: cannot write next to the output ({shown(self.path)}: {exc.strerror})"
                ) from None
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                os.close(fd)
                raise self._refuse(mode)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                owner = os.read(fd, 200).decode(errors="replace").split()
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise MineError(f"--out: cannot lock {shown(self.path)}: {exc.strerror}") from None
                who = f"PID {owner[0]} on {owner[1]}" if len(owner) >= 2 else "another process"
                raise MineError(
                    f"another styleda-fast mine ({who}) is writing this output (lock {shown(self.path)}); "
                    "wait for it to finish or stop it"
                ) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.lstat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the file was removed by its previous owner while we waited: lock the new one
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        except OSError as exc:
            os.close(fd)
            raise MineError(f"--out: cannot write {shown(self.path)}: {exc.strerror}") from None
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                if os.path.samestat(os.fstat(self.fd), os.lstat(self.path)):
                    self.path.unlink()
            os.close(self.fd)
            self.fd = None
