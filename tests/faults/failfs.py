#!/usr/bin/python3
"""A passthrough FUSE file system that fails on demand, for the data-safety tests.

    failfs.py BACKING_DIR MOUNTPOINT CONTROL_FILE

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
"""

import errno
import os
import sys

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


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    backing, mountpoint, control = sys.argv[1:]
    # big_writes: 128 KiB writes instead of 4 KiB; foreground so the test owns the
    # process; threads so a slow request does not hold up the others.
    FUSE(FailFs(backing, control), mountpoint, foreground=True, nothreads=False,
         big_writes=True, max_write=131072, default_permissions=True)


if __name__ == "__main__":
    main()
