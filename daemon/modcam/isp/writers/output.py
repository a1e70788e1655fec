"""Where a picture goes: a path or a caller's file descriptor, and how it fails.

Owns the two kinds of target every writer accepts and the one exception they
raise when the bytes cannot be written:

- a path (str or os.PathLike): the picture is written to a hidden temporary
  file in the same directory and renamed over the path only once complete,
  so a reader never sees a torn picture; on any failure the temporary file
  is removed and nothing appears at the path.
- an int file descriptor (CaptureToFd): checked to be open for writing
  before any work starts, written from its current offset, never closed or
  seeked. After a failure it holds a partial file the caller must discard;
  the exception says so.

A full disk (ENOSPC), an I/O error, a reader that went away (EPIPE) or a
closed descriptor (EBADF) all become WriteError: an OSError whose errno is
the cause and whose text is a sentence naming the picture and the target.
"""
from __future__ import annotations

import errno
import fcntl
import os
import select
import uuid

# As the C writer: a non-blocking fd that stays full this long is given up on.
WRITE_TIMEOUT_S = 10.0


class WriteError(OSError):
    """A picture could not be written; .errno says why, str() is a sentence."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def check_fd(fd: int, what: str) -> None:
    """Refuse an fd that is closed or read-only before any work is done."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as exc:
        raise WriteError(exc.errno, f"cannot write {what} to fd {fd}: it is not an open "
                         "file descriptor") from None
    if flags & os.O_ACCMODE == os.O_RDONLY or flags & getattr(os, "O_PATH", 0):
        raise WriteError(errno.EBADF, f"cannot write {what} to fd {fd}: it is not open "
                         "for writing")


def write_all(fd: int, data, what: str, where: str, done: int = 0) -> int:
    """write(2) every byte of `data` (a bytes-like object), through partial
    writes, EINTR (Python retries it) and a full non-blocking fd. `where`
    names the target and `done` counts bytes already written, for the error
    message. Returns len(data)."""
    view = memoryview(data).cast("B")
    total = len(view)
    pos = 0
    while pos < total:
        try:
            pos += os.write(fd, view[pos:])
        except BlockingIOError:
            _wait_writable(fd, what, where)
        except OSError as exc:
            raise write_error(exc.errno, what, where, done + pos) from None
    return total


def write_error(err: int, what: str, where: str, done: int) -> WriteError:
    """The exception for a failed write(2) of `what` to `where`."""
    if err == errno.ETIMEDOUT:
        return WriteError(err, f"writing {what} to {where} failed: the reader accepted "
                          f"nothing for {WRITE_TIMEOUT_S:g} s")
    return WriteError(err, f"writing {what} to {where} failed after {done} bytes: "
                      f"{os.strerror(err)}")


def _wait_writable(fd: int, what: str, where: str) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if not poller.poll(WRITE_TIMEOUT_S * 1000):
        raise write_error(errno.ETIMEDOUT, what, where, 0)


class Output:
    """An open target: `.fd` to write to (`.where` names it in messages), then
    commit() or discard() once.

    Use as a context manager: leaving normally commits, leaving with an
    exception discards. None as target means "no fd": the writer keeps the
    picture in memory (only the JPEG writer accepts that)."""

    def __init__(self, target, what: str):
        self.what = what
        self._tmp = self._path = None
        self.written = 0
        if target is None:
            self.fd, self.where = -1, "memory"
        elif isinstance(target, int) and not isinstance(target, bool):
            check_fd(target, what)
            self.fd, self.where = target, f"fd {target}"
        elif isinstance(target, (str, os.PathLike)):
            self._path = self.where = os.fspath(target)
            self.fd = self._create_temporary()
        else:
            raise TypeError(f"{what} goes to a path or an int file descriptor, "
                            f"not {type(target).__name__}")

    def _create_temporary(self) -> int:
        head, tail = os.path.split(self._path)
        self._tmp = os.path.join(head, f".{tail}.{uuid.uuid4().hex[:12]}.part")
        try:
            return os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                           0o666)
        except OSError as exc:
            self._tmp = None
            raise WriteError(exc.errno, f"cannot create {self.what} at {self._path}: "
                             f"{os.strerror(exc.errno)}") from None

    def write(self, data) -> int:
        """Write every byte of `data` (file-like, so pypng can write here too)."""
        n = write_all(self.fd, data, self.what, self.where, self.written)
        self.written += n
        return n

    def commit(self) -> None:
        """The picture is complete: close the temporary file and rename it over
        the path (nothing to do for an fd or memory)."""
        if self._tmp is None:
            return
        tmp, self._tmp = self._tmp, None
        try:
            os.close(self.fd)  # close() can report a delayed write error (NFS)
            os.replace(tmp, self._path)
        except OSError as exc:
            _unlink(tmp)
            raise WriteError(exc.errno, f"cannot complete {self.what} at {self._path}: "
                             f"{os.strerror(exc.errno)}") from None

    def discard(self) -> None:
        """The picture failed: remove the temporary file (an fd is left as is)."""
        if self._tmp is None:
            return
        tmp, self._tmp = self._tmp, None
        try:
            os.close(self.fd)
        finally:
            _unlink(tmp)

    def __enter__(self) -> "Output":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
