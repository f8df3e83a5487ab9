#!/usr/bin/env python3
"""Prints the import graph of the server crate (src/) and its cycles.

Reads every `crate::…`, `super::…` and `self::…` path in src/**/*.rs (not in `#[cfg(test)]`
modules, not in src/bench, which is the bench tool) and resolves each to the
file that defines it. Prints the edges between top-level modules, then the
strongly connected components (cycles) at module level and at file level.
Exit status 1 if there is any cycle among top-level modules.

Usage: python3 scripts/imports.py [--edges] [src_dir]
"""
import os
import re
import sys

PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
GROUP = re.compile(r"\buse\s+(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*?)\};", re.S)
TEST_MOD = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{", re.S)


def module_of(src, path):
    """`src/edge/hub.rs` -> ["edge", "hub"]; `src/edge/mod.rs` -> ["edge"]."""
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return rel


def resolve(files, segments):
    """Longest prefix of `segments` that names a file."""
    for n in range(len(segments), 0, -1):
        key = tuple(segments[:n])
        if key in files:
            return key
    return None


def strip_tests(text):
    m = TEST_MOD.search(text)
    return text[: m.start()] if m else text


def collect(src):
    files = {}
    for root, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(root, name)
                mod = module_of(src, path)
                # The crate root only declares modules; the bench is a tool.
                if not mod or mod[0] == "bench":
                    continue
                files[tuple(mod)] = path
    edges = set()
    for mod, path in files.items():
        text = strip_tests(open(path, encoding="utf-8").read())
        is_dir_mod = path.endswith("mod.rs")
        paths = []
        for root_kw, rest, inner in GROUP.findall(text):
            base = [s for s in rest.split("::") if s]
            for item in inner.split(","):
                item = item.strip().split(" as ")[0]
                first = re.split(r"::|\{", item)[0].strip()
                if first and first != "self":
                    paths.append((root_kw, base + [first]))
                elif first == "self":
                    paths.append((root_kw, base))
        for root_kw, rest in PATH.findall(text):
            paths.append((root_kw, [s for s in rest.split("::") if s]))
        for root_kw, segs in paths:
            if root_kw == "crate":
                target = list(segs)
            elif root_kw == "self":
                target = list(mod) + segs
            else:
                parent = list(mod) if is_dir_mod else list(mod[:-1])
                target = parent + segs
            t = resolve(files, target)
            if t is not None and t != mod:
                edges.add((mod, t))
    return files, edges


def sccs(nodes, edges):
    """Tarjan, iterative enough for a crate."""
    graph = {n: [] for n in nodes}
    for a, b in edges:
        graph[a].append(b)
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for n in sorted(nodes):
        if n not in index:
            visit(n)
    return [c for c in out if len(c) > 1]


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    src = args[0] if args else os.path.join(os.path.dirname(__file__), "..", "src")
    files, edges = collect(src)
    top = {(m[0],) for m in files}
    top_edges = {((a[0],), (b[0],)) for a, b in edges if a[0] != b[0]}
    print("module edges (importer -> imported):")
    for a in sorted(top):
        deps = sorted(b[0] for x, b in top_edges if x == a)
        if deps:
            print(f"  {a[0]:10} -> {', '.join(deps)}")
    top_cycles = sccs(top, top_edges)
    print("cycles among top-level modules:", "none" if not top_cycles else "")
    for c in top_cycles:
        print("  {" + ", ".join(m[0] for m in c) + "}")
    file_cycles = sccs(set(files), edges)
    print("cycles among files:", "none" if not file_cycles else "")
    for c in file_cycles:
        print(f"  {len(c)} files: " + ", ".join("/".join(m) for m in c))
    if "--edges" in sys.argv:
        print("file edges:")
        for a, b in sorted(edges):
            print(f"  {'/'.join(a)} -> {'/'.join(b)}")
    sys.exit(1 if top_cycles else 0)


if __name__ == "__main__":
    main()
