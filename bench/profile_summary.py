"""Summarize a py-spy ``--format raw`` profile (collapsed stacks) of the server.

    python bench/profile_summary.py PROFILE.txt [--match run_simulation] [--top 25] [--lines]
    python bench/profile_summary.py PROFILE.txt --match '' --no-waits   # busy time, by thread

``bench/run.py --profile`` writes one such file per phase under bench/results/profiles/
(recorded with ``--idle``, so time a thread spends blocked in fsync or waiting for the GIL
is counted too). Prints, over the stacks that contain ``--match`` (default ``WSGI``:
the request handlers), the share of samples per function inclusive
(the function or anything it calls) and per leaf (where the time is actually spent), and
per thread. ``--no-waits`` drops stacks whose leaf is a wait (idle waitress workers,
watchdog threads blocked on their queues), leaving where busy time goes.
"""

import argparse
import collections
import re

# Leaf frames where a thread only waits for work or events; --no-waits drops those stacks.
WAITS = ("Condition.wait", "_check_inotify_fd", "poll (waitress", "select (", "sleep (", "Event.wait",
         "DelayedQueue.get")
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")


def parse(path):
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
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


def summarize(path, match, top, lines=False, no_waits=False):
    inclusive, leaf, threads, total = collections.Counter(), collections.Counter(), collections.Counter(), 0
    for thread, frames, count in parse(path):
        if not any(match in frame for frame in frames):
            continue
        if no_waits and frames and any(frames[-1].startswith(w) or w in frames[-1] for w in WAITS):
            continue
        total += count
        threads[re.sub(r"^thread \([^)]*\): ", "", thread)] += count
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
    print("\n  by thread")
    for name, count in threads.most_common(top):
        print(f"  {100.0 * count / total:5.1f}%  {name}")
    print(f"\n  inclusive (top {top})")
    for name, count in inclusive.most_common(top):
        print(f"  {100.0 * count / total:5.1f}%  {name}")
    print(f"\n  leaf (top {top})")
    for name, count in leaf.most_common(top):
        print(f"  {100.0 * count / total:5.1f}%  {name}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile")
    parser.add_argument("--match", default="WSGI",
                        help="only stacks with a frame containing this text ('' for every stack)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--lines", action="store_true", help="leaf functions with their line numbers")
    parser.add_argument("--no-waits", action="store_true",
                        help="drop stacks whose leaf is a wait (idle workers, watchers) to see where busy time goes")
    args = parser.parse_args()
    summarize(args.profile, args.match, args.top, args.lines, args.no_waits)
