#!/usr/bin/env python3
# A multi-threaded CPython process for the benchmark (bench/workloads/pythreads.ts):
# a real interpreter with several threads, speaking memwork's protocol
# (test/workloads/memwork.c) so the harness drives it the same way:
#   pythreads.py --mib N --report FILE [--write-mbps R] [--threads T]
#   SIGUSR1  verify every page, write a report, continue
#   SIGUSR2  reset maxGapMs
# Each thread owns a bytearray of N/T MiB. Every 4 KiB page holds its owner,
# its index and a generation, repeated: a page that is stale, zeroed or
# moved never passes. Threads rewrite random pages at R/T MB/s and record the
# longest gap between two iterations of their ~1 ms loop (wall clock, so a
# migration's freeze counts in full); a report gives the longest over all.
import json
import os
import random
import signal
import struct
import sys
import threading
import time

PAGE = 4096


def die(msg):
    sys.stderr.write(f'pythreads: {msg}\n')
    sys.exit(2)


def parse(argv):
    opts = {'mib': 0, 'write-mbps': 0, 'threads': 4, 'report': ''}
    i = 0
    while i < len(argv):
        name = argv[i][2:] if argv[i].startswith('--') else ''
        if name not in opts or i + 1 >= len(argv):
            die(f'bad argument {argv[i]!r} (usage: pythreads.py --mib N --report FILE [--write-mbps R] [--threads T])')
        value = argv[i + 1]
        opts[name] = value if name == 'report' else int(value)
        i += 2
    if opts['mib'] <= 0 or not opts['report'] or not 1 <= opts['threads'] <= 64:
        die('usage: pythreads.py --mib N --report FILE [--write-mbps R] [--threads T]')
    return opts


def page_bytes(owner, index, gen):
    return struct.pack('<IIQ', owner, index, gen) * (PAGE // 16)


class Worker(threading.Thread):
    def __init__(self, owner, pages, mbps):
        super().__init__(daemon=True)
        self.owner = owner
        self.pages = pages
        self.buf = bytearray(pages * PAGE)
        self.gens = [0] * pages
        self.lock = threading.Lock()
        self.pages_per_ms = mbps * 1e6 / PAGE / 1e3
        self.max_gap = 0.0
        self.iterations = 0
        self.reset = False
        self.checked = False
        for i in range(pages):
            self.buf[i * PAGE:(i + 1) * PAGE] = page_bytes(owner, i, 0)

    def run(self):
        rnd = random.Random(self.owner)
        credit = 0.0
        prev = time.time()
        while True:
            time.sleep(0.001)
            now = time.time()
            gap = (now - prev) * 1000
            prev = now
            self.iterations += 1
            if self.reset:
                self.reset = False
                self.max_gap = 0.0
            elif self.checked:
                self.checked = False  # the wait for a verification is no stall
            elif gap > self.max_gap:
                self.max_gap = gap
            # Catch up at most 50 ms after a stall (as memwork does).
            credit += self.pages_per_ms * min(gap, 50)
            n = int(credit)
            credit -= n
            with self.lock:
                for _ in range(n):
                    i = rnd.randrange(self.pages)
                    self.gens[i] += 1
                    self.buf[i * PAGE:(i + 1) * PAGE] = page_bytes(self.owner, i, self.gens[i])

    def verify(self):
        """(bad pages, first bad page index or -1), with the writer held off meanwhile."""
        bad, first = 0, -1
        with self.lock:
            view = memoryview(self.buf)
            for i in range(self.pages):
                if view[i * PAGE:(i + 1) * PAGE] != page_bytes(self.owner, i, self.gens[i]):
                    bad += 1
                    if first < 0:
                        first = i
            self.checked = True
        return bad, first


def main():
    opts = parse(sys.argv[1:])
    n = opts['threads']
    pages = opts['mib'] * (2 ** 20 // PAGE) // n
    try:
        os.setsid()  # a session inside the dumped tree (as memwork does); under setsid(1) it is one already
    except OSError:
        pass
    want = {'report': False}
    signal.signal(signal.SIGUSR1, lambda *_: want.__setitem__('report', True))
    workers = [Worker(k, pages, opts['write-mbps'] / n) for k in range(n)]
    signal.signal(signal.SIGUSR2, lambda *_: [setattr(w, 'reset', True) for w in workers])
    # No pipe to the launcher may stay open: CRIU would have to dump it.
    nul = os.open('/dev/null', os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(nul, fd)
    seq = 0

    def report():
        nonlocal seq
        gap = max(w.max_gap for w in workers)
        bad, first = 0, -1
        for k, w in enumerate(workers):
            b, f = w.verify()
            if b and first < 0:
                first = k * pages + f
            bad += b
        seq += 1
        out = {'ok': bad == 0, 'pages': pages * n, 'badPages': bad, 'firstBad': first, 'maxGapMs': gap,
               'iterations': sum(w.iterations for w in workers), 'seq': seq, 'addr': '0'}
        tmp = opts['report'] + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(out, f)
        os.rename(tmp, opts['report'])

    report()  # seq 1: ready
    for w in workers:
        w.start()
    while True:
        time.sleep(0.001)
        if want['report']:
            want['report'] = False
            report()


if __name__ == '__main__':
    main()
