"""Summarize a py-spy ``--format raw`` profile (collapsed stacks) of the server.

    python bench/profile_summary.py PROFILE.txt [--match run_simulation] [--top 25]

``bench/run.py --profile`` writes one such file per phase under bench/results/profiles/
(recorded with ``--idle``, so time a thread spends blocked in fsync or waiting for the GIL
is counted too). Prints, over the stacks that contain ``--match`` (default: every
non-idle stack in a request handler), the share of samples per function inclusive
(the function or anything it calls) and per leaf (where the time is actually spent).
"""

import argparse
import collections
import re

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")


def parse(path):
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        try:
            count = int(count)
        except ValueError:
            continue
        frames = stack.split(";")
        yield frames[0], frames[1:], count


def short(frame, lines=False):
    m = FRAME.match(frame)
    if not m:
        return frame
    file = m.group("file")
    for marker in ("site-packages/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
    where = f"{file}:{m.group('line')}" if lines and m.group("line") else file
    return f"{m.group('func')} ({where})"


def summarize(path, match, top, lines=False):
    inclusive, leaf, total = collections.Counter(), collections.Counter(), 0
    for _thread, frames, count in parse(path):
        if not any(match in frame for frame in frames):
            continue
        total += count
        seen = set()
        for frame in frames:
            name = short(frame)
            if name not in seen:
                inclusive[name] += count
                seen.add(name)
        leaf[short(frames[-1], lines)] += count
    print(f"{path}: {total} samples in stacks containing {match!r}")
    if not total:
        return
    print(f"\n  inclusive (top {top})")
    for name, count in inclusive.most_common(top):
        print(f"  {100.0 * count / total:5.1f}%  {name}")
    print(f"\n  leaf (top {top})")
    for name, count in leaf.most_common(top):
        print(f"  {100.0 * count / total:5.1f}%  {name}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile")
    parser.add_argument("--match", default="WSGI", help="only stacks with a frame containing this text")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--lines", action="store_true", help="leaf functions with their line numbers")
    args = parser.parse_args()
    summarize(args.profile, args.match, args.top, args.lines)
