"""Runs `python -m llmlab.MODULE ARGS` on a disk that fills: `python tests/full_disk_driver.py WHERE MODULE ARGS`.

WHERE: shards    every token-shard file opened for writing after the first four is on a full disk (ENOSPC)
       datasets  `datasets` cannot write the Arrow cache it converts a data file into (ENOSPC, wrapped in its own
                 error as a real full disk is)
"""

from __future__ import annotations

import errno
import os
import runpy
import sys

WHERE, MODULE = sys.argv[1], sys.argv[2]
sys.argv = [MODULE, *sys.argv[3:]]


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FullFile:
    """A file whose every write finds the disk full."""

    def __init__(self, file):
        self.file = file

    def write(self, data):
        no_space()

    def close(self):
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if WHERE == "shards":
    import llmlab.data.shards as shards

    opened = []

    def full_open(path, mode="r", *args, **kwargs):
        file = open(path, mode, *args, **kwargs)
        if "w" in mode:
            opened.append(path)
            if len(opened) > 4:
                return FullFile(file)
        return file

    shards.open = full_open
elif WHERE == "datasets":
    from datasets import arrow_writer

    arrow_writer.ArrowWriter.write_table = no_space
    arrow_writer.ArrowWriter.write_batch = no_space
    arrow_writer.ArrowWriter.write = no_space

runpy.run_module(MODULE, run_name="__main__", alter_sys=True)
