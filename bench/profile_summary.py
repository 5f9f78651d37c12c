#!/usr/bin/env python3
"""Summarise py-spy collapsed stacks (``--format raw``) written by ``throughput.py --profile-dir``.

    python bench/profile_summary.py /tmp/prof/sqlite-w1-worker0.txt [--top 25] [--match oncely/]

Prints, for the samples of all files given: the functions with the most *inclusive* samples
(the function is anywhere on the stack), the most *self* samples (the innermost Python frame,
which includes time in C calls such as ``sqlite3`` it made), and the hottest lines.
Percentages are of all samples; py-spy leaves idle threads out by default, so samples are
busy time of any thread.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def parse(paths: list[Path]) -> list[tuple[list[tuple[str, str, str]], int]]:
    stacks = []
    for path in paths:
        for raw in path.read_text(errors="replace").splitlines():
            stack_text, _, count = raw.rpartition(" ")
            if not stack_text or not count.isdigit():
                continue
            frames = []
            for frame in stack_text.split(";"):
                match = FRAME.match(frame)
                if match:
                    frames.append((match["func"], match["file"], match["line"] or "?"))
                else:
                    frames.append((frame, "?", "?"))
            stacks.append((frames, int(count)))
    return stacks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default="", help="only list frames whose file contains this")
    args = parser.parse_args()
    stacks = parse(args.files)
    total = sum(count for _, count in stacks)
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    for frames, count in stacks:
        seen = set()
        for func, file, _ in frames:
            key = f"{file}:{func}"
            if key not in seen:
                seen.add(key)
                inclusive[key] += count
        func, file, line = frames[-1]
        own[f"{file}:{func}"] += count
        lines[f"{file}:{line} ({func})"] += count
    print(f"{total} samples in {len(args.files)} file(s)")
    for title, counter in (("inclusive", inclusive), ("self", own), ("self, by line", lines)):
        print(f"\n== top {args.top} by {title} ==")
        shown = 0
        for key, count in counter.most_common():
            if args.match and args.match not in key:
                continue
            print(f"{100.0 * count / total:6.1f}%  {count:7d}  {key}")
            shown += 1
            if shown >= args.top:
                break


if __name__ == "__main__":
    main()
