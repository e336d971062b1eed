#!/usr/bin/env python3
"""Checks the shape of host/src that ARCHITECTURE.md promises (the test command runs it):

- no file has more than MAX_LINES lines before its tests (blank lines and comments counted);
- every folder (and top-level file) of host/src is a layer named in lib.rs's list, which reads
  top to bottom, and no module uses one from a layer above its own;
- no import circle between files, nor between folders;
- only lib.rs, main.rs and the bottom layer's files sit loose at the top of host/src;
- the README's layout table names every folder.

What counts as "uses": a `crate::`, `super::` or `self::` path (in a `use` or inline), resolved to
the file that defines the item: a name a module only imports (`use problem::Problem;` in a
mod.rs, for its children to use as `super::Problem`) leads to the file it came from. A module's
own `use` counts only where the name is used again in that file, so a mod.rs that only
gathers its children's items for others is no user of them. Declaring a child (`mod x;`) is
not a use, and neither is a file's use of its own folder's mod.rs: a folder's mod.rs holds what
the folder shares (the host state whose `Host` impls live in the folder's files, the folder's
error type), so the files in it build on it, and it may gather or call them; every other use,
between sibling files, across folders or up to a grandparent, counts.

`python3 scripts/layers.py --graph` prints the file graph instead of checking it.
"""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SRC = os.path.join(ROOT, "host", "src")
MAX_LINES = 400
LOOSE_FILES = {"lib.rs", "main.rs"}

ITEM = re.compile(
    r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:async\s+|unsafe\s+|const\s+(?=fn))*"
    r"(fn|struct|enum|const|static|type|trait|mod|union)\s+(\w+)",
    re.M,
)
MACRO = re.compile(r"^\s*macro_rules!\s*(\w+)", re.M)
USE = re.compile(r"^\s*(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", re.M)
PATH = re.compile(r"\b((?:crate|self|super)(?:::(?:super|\w+))*(?:::\{[^;{}]*(?:\{[^;{}]*\}[^;{}]*)*\})?)")


def module_of(path):
    parts = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def before_tests(text):
    """The file up to its test module."""
    match = re.search(r"^#\[cfg\(test\)\]\s*\nmod tests\b", text, re.M)
    return text if match is None else text[: match.start()]


def strip_comments_and_strings(text):
    """The code with comments removed and string and char literals emptied (lines kept)."""
    out, i, n = [], 0, len(text)
    while i < n:
        ch = text[i]
        if text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    out.append("\n" if text[i] == "\n" else "")
                    i += 1
        elif ch in "rb" and re.match(r"(?:br|r)#*\"", text[i:]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r"(?:br|r)(#*)\"", text[i:])
            close = '"' + m.group(1)
            end = text.find(close, i + m.end())
            end = n if end < 0 else end + len(close)
            out.append('""' + "\n" * text.count("\n", i, end))
            i = end
        elif ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif ch == "'":
            m = re.match(r"'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]+\}|.)|[^\\'])'", text[i:])
            if m:
                out.append("' '")
                i += m.end()
            else:
                out.append(ch)
                i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def split_tree(tree):
    """`a::{b, c::{d, e as f}}` -> [(['a','b'], 'b'), (['a','c','d'], 'd'), (['a','c','e'], 'f')]."""
    tree = re.sub(r"\s+", "", tree)
    out = []

    def walk(prefix, text):
        depth, start, items = 0, 0, []
        for i, ch in enumerate(text):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                items.append(text[start:i])
                start = i + 1
        items.append(text[start:])
        for item in filter(None, items):
            brace = item.find("{")
            if brace >= 0:
                head = [s for s in item[:brace].split("::") if s]
                walk(prefix + head, item[brace + 1 : item.rindex("}")])
                continue
            alias = None
            if "as" in item and re.search(r"(?<=\w)as(?=\w)", item):
                item, alias = re.split(r"(?<=\w)as(?=\w)", item, maxsplit=1)
            segs = prefix + [s for s in item.split("::") if s]
            if segs and segs[-1] == "self":
                segs = segs[:-1]
            name = alias or (segs[-1] if segs else None)
            out.append((segs, name))

    walk([], tree)
    return out


class Tree:
    def __init__(self):
        self.files = {}
        for folder, _, names in os.walk(SRC):
            for name in names:
                if name.endswith(".rs"):
                    path = os.path.join(folder, name)
                    self.files[module_of(path)] = path
        self.text = {m: strip_comments_and_strings(before_tests(open(p).read())) for m, p in self.files.items()}
        self.defined = {m: set(ITEM.findall(t) and [n for _, n in ITEM.findall(t)]) | set(MACRO.findall(t)) for m, t in self.text.items()}
        self.imports = {m: self._imports(m) for m in self.files}

    def absolute(self, module, segs):
        """A path as written in `module` made absolute (a list of segments from the crate root)."""
        segs = list(segs)
        if not segs:
            return []
        if segs[0] == "crate":
            return segs[1:]
        if segs[0] in ("self", "super"):
            base = list(module)
            while segs and segs[0] in ("self", "super"):
                if segs.pop(0) == "super":
                    base = base[:-1]
            return base + segs
        if tuple(module) + (segs[0],) in self.files:
            return list(module) + segs  # a child module named without `self::`
        return None  # another crate

    def _imports(self, module):
        """name -> absolute path, for the `use` items of `module` that point into the crate."""
        found = {}
        for _, tree in USE.findall(self.text[module]):
            for segs, name in split_tree(tree):
                absolute = self.absolute(module, segs)
                if absolute is not None and name and name != "*":
                    found[name] = absolute
        return found

    def resolve(self, segs, seen=None):
        """The file that defines the item at absolute path `segs`."""
        seen = seen or set()
        for n in range(len(segs), -1, -1):
            module = tuple(segs[:n])
            if module not in self.files:
                continue
            rest = segs[n:]
            if rest and rest[0] not in self.defined[module] and rest[0] in self.imports[module]:
                key = (module, rest[0])
                if key not in seen:
                    seen.add(key)
                    return self.resolve(self.imports[module][rest[0]] + rest[1:], seen)
            return module
        return ()

    def uses(self, module):
        text = self.text[module]
        body = USE.sub("", text)
        targets = set()
        for _, tree in USE.findall(text):
            for segs, name in split_tree(tree):
                absolute = self.absolute(module, segs)
                if absolute is None:
                    continue
                if name in (None, "*") or re.search(r"\b%s\b" % re.escape(name), body):
                    targets.add(self.resolve(absolute))
        children = [m[-1] for m in self.files if m[:-1] == module and m]
        written_paths = [match.group(1) for match in PATH.finditer(body)]
        if children:
            child = re.compile(r"(?<![\w:])((?:%s)(?:::\w+)+)" % "|".join(map(re.escape, children)))
            written_paths += [match.group(1) for match in child.finditer(body)]
        for written in written_paths:
            brace = written.find("::{")
            if brace >= 0:
                for segs, _ in split_tree(written[brace + 2 :][1:-1]):
                    absolute = self.absolute(module, written[:brace].split("::") + segs)
                    if absolute is not None:
                        targets.add(self.resolve(absolute))
            else:
                absolute = self.absolute(module, written.split("::"))
                if absolute is not None:
                    targets.add(self.resolve(absolute))
        # A file's own folder front (its parent mod.rs) holds what the folder shares: see the
        # module doc.
        return {t for t in targets if t in self.files and t != module and t != module[:-1]}


def cycles(graph):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def layers():
    """lib.rs's list of layers, top to bottom: [[names on one line], ...]."""
    doc = open(os.path.join(SRC, "lib.rs")).read()
    found = []
    for line in doc.splitlines():
        if line.startswith("//! - "):
            head = line[len("//! - ") :].split(":")[0]
            found.append(re.findall(r"\[`(\w+)`\]", head))
    return found


def name(module):
    return "::".join(module) or "crate"


def main():
    tree = Tree()
    graph = {m: tree.uses(m) for m in tree.files}
    if "--graph" in sys.argv:
        for m in sorted(graph):
            print(name(m), "->", ", ".join(sorted(name(t) for t in graph[m])))
        return 0
    problems = []

    for module, path in sorted(tree.files.items()):
        lines = before_tests(open(path).read()).count("\n")
        if lines > MAX_LINES:
            problems.append(f"{os.path.relpath(path, ROOT)}: {lines} lines before its tests (at most {MAX_LINES}): split it by concern")

    order = layers()
    rank = {n: i for i, names in enumerate(order) for n in names}
    bottom = set(order[-1]) if order else set()
    tops = sorted({m[0] for m in tree.files if m})
    for top in tops:
        if top not in rank:
            problems.append(f"host/src/{top}: not a layer in lib.rs's list")
        if os.path.isfile(os.path.join(SRC, top + ".rs")) and top not in bottom:
            problems.append(f"host/src/{top}.rs sits loose at the top: give it a folder in its layer")
    for m, targets in graph.items():
        for t in targets:
            if m and t and m[0] in rank and t[0] in rank and rank[t[0]] < rank[m[0]]:
                problems.append(f"{name(m)} uses {name(t)}, from a layer above its own")

    for component in cycles(graph):
        problems.append("import circle between files: " + ", ".join(name(m) for m in component))
    folders = {}
    for m, targets in graph.items():
        if m:
            folders.setdefault(m[0], set()).update(t[0] for t in targets if t and t[0] != m[0])
    for component in cycles(folders):
        problems.append("import circle between folders: " + ", ".join(component))

    readme = open(os.path.join(ROOT, "README.md")).read()
    for top in tops:
        if os.path.isdir(os.path.join(SRC, top)) and f"`host/src/{top}/`" not in readme:
            problems.append(f"README.md's layout table does not name host/src/{top}/")

    for problem in problems:
        print(problem)
    print(f"layers: {len(tree.files)} files, {sum(map(len, graph.values()))} uses checked; {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
