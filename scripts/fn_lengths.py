#!/usr/bin/env python3
"""Lengths of Rust functions by brace matching (strings, chars and comments skipped).

    scripts/fn_lengths.py [DIR ...] [--top N] [--max LINES]

Prints the N longest functions (default 15) as `lines  file:line  name`. With --max, exits 1
when a function outside a SIMD kernel (a `#[target_feature]` function) is longer than LINES.
"""
import os
import re
import sys

FN = re.compile(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)")


def code_mask(text):
    """The text with comments, strings and char literals blanked (newlines kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"' or (c == "r" and re.match(r'r#*"', text[i:i + 10])):
            m = re.match(r'r(#*)"', text[i:i + 10])
            if m:
                end = '"' + m.group(1)
                j = text.find(end, i + len(m.group(0)))
                j = n if j < 0 else j + len(end)
            else:
                j = i + 1
                while j < n and text[j] != '"':
                    j += 2 if text[j] == "\\" else 1
                j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]) or text.startswith("'\\u{", i):
            j = text.find("'", i + 1) + 1
            out.append(" " * (j - i))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def functions(path):
    text = open(path, encoding="utf-8").read()
    code = code_mask(text)
    for m in FN.finditer(code):
        start = m.start()
        # The body opens at the first `{` after the signature; a `;` first means no body.
        j = start
        depth_paren = 0
        while j < len(code):
            ch = code[j]
            if ch in "([<":
                depth_paren += ch != "<"
            elif ch in ")]":
                depth_paren -= 1
            elif ch == ";" and depth_paren == 0:
                j = -1
                break
            elif ch == "{" and depth_paren == 0:
                break
            j += 1
        if j < 0 or j >= len(code):
            continue
        depth, k = 0, j
        while k < len(code):
            if code[k] == "{":
                depth += 1
            elif code[k] == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        first = code.count("\n", 0, start) + 1
        last = code.count("\n", 0, k) + 1
        before = text[:start].rsplit("\n", 4)
        simd = any("target_feature" in line for line in before[1:])
        yield last - first + 1, first, m.group(1), simd


def main(argv):
    top, limit, dirs = 15, None, []
    it = iter(argv)
    for a in it:
        if a == "--top":
            top = int(next(it))
        elif a == "--max":
            limit = int(next(it))
        else:
            dirs.append(a)
    rows = []
    for d in dirs or ["src"]:
        for root, _, files in os.walk(d):
            for f in files:
                if f.endswith(".rs"):
                    p = os.path.join(root, f)
                    rows += [(n, p, line, name, simd) for n, line, name, simd in functions(p)]
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    for n, p, line, name, simd in rows[:top]:
        print(f"{n:5d}  {p}:{line}  {name}{'  (SIMD kernel)' if simd else ''}")
    if limit is not None:
        over = [r for r in rows if r[0] > limit and not r[4]]
        if over:
            print(f"{len(over)} function(s) longer than {limit} lines", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
