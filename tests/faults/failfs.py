#!/usr/bin/python3
"""A passthrough FUSE file system that fails on demand, for the data-safety tests.

    failfs.py [--volatile] BACKING_DIR MOUNTPOINT CONTROL_FILE

Every file operation on MOUNTPOINT goes to the same path under BACKING_DIR. While
CONTROL_FILE exists (it lives outside the mount), the words it contains choose what
fails with EIO:

    fsync   fsync and fdatasync of files and directories (also what O_DSYNC and
            RWF_DSYNC writes wait for, since the kernel sends FUSE_FSYNC for those)
    write   every write

A word OP:TEXT limits OP to paths containing TEXT (write:.wal fails only the writes to
the write-ahead logs).

So a test turns a fault on and off with one file and needs no device-mapper. Runs in
the foreground until unmounted or killed; prints "failfs: mounted" once serving, and
one "failfs: EIO OP PATH" line per injected failure (flushed, for the test's log).

--volatile makes it a machine that can die: writes and truncations are kept in this
process's memory (reads and sizes show them) and reach BACKING_DIR only at an fsync or
fdatasync of that file, as dirty pages reach the disk only when synced (the worst case
a kernel allows). SIGUSR1 is the machine's death: every unsynced change is dropped,
the process prints "failfs: died, dropped N unsynced changes" and exits, and the mount
answers ENOTCONN from then on. BACKING_DIR then holds what a survivor reading the same
storage would find. Namespace changes (create, rename, unlink) go through at once.
"""

import errno
import os
import signal
import sys
import threading

from fusepy import FUSE, FuseOSError, Operations


class FailFs(Operations):
    def __init__(self, backing, control):
        self.backing = os.path.realpath(backing)
        self.control = control
        self.announced = False

    def _path(self, path):
        return os.path.join(self.backing, path.lstrip("/"))

    def _failing(self, what, path):
        try:
            with open(self.control) as f:
                words = f.read().split()
        except FileNotFoundError:
            return
        for word in words:
            op, _, text = word.partition(":")
            if op == what and text in path:
                print(f"failfs: EIO {what} {path}", flush=True)
                raise FuseOSError(errno.EIO)

    def init(self, path):
        print("failfs: mounted", flush=True)

    # Metadata.
    def access(self, path, mode):
        if not os.access(self._path(path), mode):
            raise FuseOSError(errno.EACCES)

    def getattr(self, path, fh=None):
        st = os.lstat(self._path(path))
        keys = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime",
                "st_nlink", "st_size", "st_uid", "st_blocks")
        return {k: getattr(st, k) for k in keys}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._path(path))

    def statfs(self, path):
        st = os.statvfs(self._path(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")
        return {k: getattr(st, k) for k in keys}

    def chmod(self, path, mode):
        os.chmod(self._path(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self._path(path), uid, gid)

    def utimens(self, path, times=None):
        os.utime(self._path(path), times)

    def mkdir(self, path, mode):
        os.mkdir(self._path(path), mode)

    def rmdir(self, path):
        os.rmdir(self._path(path))

    def unlink(self, path):
        os.unlink(self._path(path))

    def rename(self, old, new):
        os.rename(self._path(old), self._path(new))

    def link(self, target, source):
        os.link(self._path(source), self._path(target))

    def symlink(self, target, source):
        os.symlink(source, self._path(target))

    def readlink(self, path):
        return os.readlink(self._path(path))

    # Files.
    def open(self, path, flags):
        return os.open(self._path(path), flags & ~os.O_CREAT)

    def create(self, path, mode, fi=None):
        return os.open(self._path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        self._failing("write", path)
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        if fh is None:
            os.truncate(self._path(path), length)
        else:
            os.ftruncate(fh, length)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)

    def fsync(self, path, datasync, fh):
        self._failing("fsync", path)
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)

    def fsyncdir(self, path, datasync, fh):
        self._failing("fsync", path)
        fd = os.open(self._path(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class VolatileFs(FailFs):
    """FailFs whose writes stay in memory until the file is synced (see the module
    docs). One lock orders every change against syncs and the death: a sync that
    returned before the death is in BACKING_DIR, anything after it is refused."""

    def __init__(self, backing, control):
        super().__init__(backing, control)
        self.mu = threading.Lock()
        # path -> [("w", offset, bytes) | ("t", length)], oldest first.
        self.pending = {}
        self.dead = False

    def _alive(self):
        if self.dead:
            raise FuseOSError(errno.ENOTCONN)

    def die(self):
        with self.mu:
            self.dead = True
            dropped = sum(len(ops) for ops in self.pending.values())
            self.pending.clear()
            print(f"failfs: died, dropped {dropped} unsynced changes", flush=True)
            os._exit(0)

    def _size(self, path, ops):
        size = os.lstat(self._path(path)).st_size
        for op in ops:
            size = max(size, op[1] + len(op[2])) if op[0] == "w" else op[1]
        return size

    def getattr(self, path, fh=None):
        with self.mu:
            self._alive()
            st = super().getattr(path, fh)
            ops = self.pending.get(path)
            if ops:
                st["st_size"] = self._size(path, ops)
            return st

    def read(self, path, size, offset, fh):
        with self.mu:
            self._alive()
            ops = self.pending.get(path)
            if not ops:
                return os.pread(fh, size, offset)
            # Its own descriptor: fh may be write-only.
            fd = os.open(self._path(path), os.O_RDONLY)
            try:
                base = os.pread(fd, size, offset)
            finally:
                os.close(fd)
            buf = bytearray(base.ljust(size, b"\0"))
            end = offset + size
            for op in ops:
                if op[0] == "w":
                    lo, hi = max(op[1], offset), min(op[1] + len(op[2]), end)
                    if lo < hi:
                        buf[lo - offset:hi - offset] = op[2][lo - op[1]:hi - op[1]]
                elif op[1] < end:
                    lo = max(op[1], offset)
                    buf[lo - offset:] = bytes(end - lo)
            return bytes(buf[:max(0, min(size, self._size(path, ops) - offset))])

    def write(self, path, data, offset, fh):
        with self.mu:
            self._alive()
            self._failing("write", path)
            self.pending.setdefault(path, []).append(("w", offset, bytes(data)))
            return len(data)

    def truncate(self, path, length, fh=None):
        with self.mu:
            self._alive()
            self.pending.setdefault(path, []).append(("t", length))

    def fsync(self, path, datasync, fh):
        with self.mu:
            self._alive()
            self._failing("fsync", path)
            ops = self.pending.pop(path, [])
            fd = os.open(self._path(path), os.O_WRONLY)
            try:
                for op in ops:
                    if op[0] == "w":
                        os.pwrite(fd, op[2], op[1])
                    else:
                        os.ftruncate(fd, op[1])
                os.fsync(fd)
            finally:
                os.close(fd)

    def create(self, path, mode, fi=None):
        with self.mu:
            self._alive()
            self.pending.pop(path, None)
            return super().create(path, mode, fi)

    def open(self, path, flags):
        with self.mu:
            self._alive()
            if flags & os.O_TRUNC:
                self.pending.pop(path, None)
            return super().open(path, flags)

    def unlink(self, path):
        with self.mu:
            self._alive()
            self.pending.pop(path, None)
            super().unlink(path)

    def rename(self, old, new):
        with self.mu:
            self._alive()
            super().rename(old, new)
            self.pending.pop(new, None)
            if old in self.pending:
                self.pending[new] = self.pending.pop(old)


def main():
    args = sys.argv[1:]
    volatile = args[:1] == ["--volatile"]
    if volatile:
        args = args[1:]
    if len(args) != 3:
        sys.exit(__doc__)
    backing, mountpoint, control = args
    if volatile:
        fs = VolatileFs(backing, control)
        # The death comes as SIGUSR1 to a thread of its own: Python runs signal
        # handlers only in the main thread, which sits in libfuse's loop. Blocked
        # here, before any thread starts, so every thread inherits the mask.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})

        def wait_for_death():
            signal.sigwait({signal.SIGUSR1})
            fs.die()

        threading.Thread(target=wait_for_death, daemon=True).start()
    else:
        fs = FailFs(backing, control)
    # big_writes: 128 KiB writes instead of 4 KiB; foreground so the test owns the
    # process; threads so a slow request does not hold up the others.
    # nonempty (volatile): a test may mount it over the very directory it passes
    # through, reached by BACKING_DIR through a bind mount.
    extra = {"nonempty": True} if volatile else {}
    FUSE(fs, mountpoint, foreground=True, nothreads=False,
         big_writes=True, max_write=131072, default_permissions=True, **extra)


if __name__ == "__main__":
    main()
