#!/usr/bin/env python3
# flusher.py DATADIR: every second, fdatasync every relation file under DATADIR/base modified
# in the last 5 s (an experiment: does steady flushing of PostgreSQL's data files remove the
# kernel's write-back bursts?)
import os, sys, time
base = os.path.join(sys.argv[1], "base")
while os.path.isdir(base):
    t0 = time.time()
    for root, _, files in os.walk(base):
        for f in files:
            p = os.path.join(root, f)
            try:
                if t0 - os.stat(p).st_mtime > 5:
                    continue
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            except OSError:
                pass
    time.sleep(max(0.0, 1.0 - (time.time() - t0)))
