"""`.dockerignore` matching (steps/_dockerignore.py) against Docker's rules, with the Docker SDK's
`exclude_paths` as the oracle on many random patterns and trees (no engine needed)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from buildsys.steps._dockerignore import BadPattern, Matcher, read_patterns, sent_paths
from docker.utils.build import exclude_paths

from buildsys.errors import StepError
from buildsys.step import Context

NAMES = ["a", "b", "ab", "node_modules", "x.py", "y.txt", "build", ".git", "c.pyc", "keep"]
ATOMS = ["a", "b", "ab", "*", "?", "node_modules", "*.py", "*.txt", "x.py", "build", ".git", "a*", "[ab]",
         "[a-c]*", "k?ep", ".", "a/..", "*.p[xy]"]


def _tree(rng: random.Random, folder: Path, depth: int = 0) -> None:
    for _ in range(rng.randint(1, 4)):
        path = folder / rng.choice(NAMES)
        if path.exists():
            continue
        if depth < 3 and rng.random() < 0.45:
            path.mkdir()
            _tree(rng, path, depth + 1)
        else:
            path.write_text("x")


def _pattern(rng: random.Random, double_star: bool) -> str:
    atoms = [*ATOMS, "**"] if double_star else ATOMS
    text = "/".join(rng.choice(atoms) for _ in range(rng.choice((1, 1, 1, 2, 2, 3))))
    if rng.random() < 0.15:
        text = "/" + text
    if rng.random() < 0.1:
        text += "/"
    return ("!" if rng.random() < 0.3 else "") + text


def _cases(tmp_path: Path, seed: int, count: int, double_star: bool) -> list[tuple[Path, list[str]]]:
    """`count` pattern lists, five on each random tree."""
    rng = random.Random(seed)
    cases = []
    for n in range(count):
        if n % 5 == 0:
            root = tmp_path / str(n)
            root.mkdir()
            _tree(rng, root)
            (root / "Dockerfile").write_text("FROM scratch\n")
        cases.append((root, [_pattern(rng, double_star) for _ in range(rng.randint(1, 4))]))
    return cases


def test_the_context_sent_is_the_sdks_on_random_patterns_and_trees(tmp_path: Path) -> None:
    """Without `**` (see below) the SDK and Docker's rules agree: every path, file or directory."""
    cases = _cases(tmp_path, seed=19, count=300, double_star=False)
    everything = {root: sent_paths(root, []) for root, _ in cases}
    excluded_some = 0
    for root, patterns in cases:
        ours = sent_paths(root, patterns)
        assert ours == exclude_paths(str(root), list(patterns), dockerfile="Dockerfile"), patterns
        excluded_some += ours != everything[root]
    assert excluded_some > len(cases) // 4  # not a test of empty pattern lists


class _SdkParents(Matcher):
    """The SDK's parent rule: only the parent as deep as the pattern is compared (moby's
    deprecated ``Matches``); Docker compares every parent (``MatchesOrParentMatches``)."""

    def excluded(self, path: str) -> bool:
        parents = path.split("/")[:-1]
        excluded = False
        for pattern in self.patterns:
            hit = pattern.matches(path)
            if not hit and parents and pattern.depth <= len(parents):
                hit = pattern.matches("/".join(parents[: pattern.depth]))
            if hit:
                excluded = not pattern.exception
        return excluded


def test_with_double_star_only_the_parent_rule_differs_from_the_sdk(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """With `**` a pattern can match a parent at another depth than its own: `**/tmp` matches the
    parent `x/y/tmp` of `x/y/tmp/sub/f`, so Docker leaves the file out; the SDK compares only the
    parent as deep as the pattern (`x/y`) and sends it, when an exception made its walk enter
    `x/y/tmp`. With the SDK's parent rule swapped in, every result is the SDK's."""
    import buildsys.steps._dockerignore as module

    cases = _cases(tmp_path, seed=20, count=200, double_star=True)
    cases.append((_files(tmp_path / "explicit", ["Dockerfile", "x/y/tmp/keep", "x/y/tmp/sub/f"]),
                  ["**/tmp", "!x/y/tmp/keep"]))
    ours = [sent_paths(root, patterns) for root, patterns in cases]
    sdk = [exclude_paths(str(root), list(patterns), dockerfile="Dockerfile") for root, patterns in cases]
    monkeypatch.setattr(module, "Matcher", _SdkParents)
    assert [sent_paths(root, patterns) for root, patterns in cases] == sdk
    assert [n for n, (a, b) in enumerate(zip(ours, sdk, strict=True)) if a != b] == [len(cases) - 1]
    assert {"x/y/tmp/keep", "x/y/tmp/sub/f"} <= sdk[-1]
    assert "x/y/tmp/keep" in ours[-1] and "x/y/tmp/sub/f" not in ours[-1]


def _files(root: Path, files: list[str]) -> Path:
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    return root


TREE = ["Dockerfile", ".dockerignore", "README.md", "README-secret.md", "CHANGES.md", "main.go",
        "lib/util.go", "lib/deep/x.go", "docs/a.md", "temp", "tempa", "src/temp1/f", "node_modules/m/i.js",
        "a/b/node_modules/n/i.js", "build/out.bin", "build/keep.txt", "notes.MD", "#notes"]


@pytest.mark.parametrize(("patterns", "gone"), [
    (["*.md", "!README*.md", "README-secret.md"], {"CHANGES.md", "README-secret.md"}),  # the docs' example
    (["*.md", "README-secret.md", "!README*.md"], {"CHANGES.md"}),  # the last match decides
    (["**/*.go"], {"main.go", "lib/util.go", "lib/deep/x.go"}),
    (["*/temp*"], {"src/temp1/f"}),
    (["temp?"], {"tempa"}),
    (["/temp", "/lib/deep"], {"temp", "lib/deep/x.go"}),  # a leading slash: from the root
    (["**/node_modules"], {"node_modules/m/i.js", "a/b/node_modules/n/i.js"}),
    (["build", "!build/keep.txt"], {"build/out.bin"}),  # an exception inside an excluded directory
    (["*.md"], {"README.md", "README-secret.md", "CHANGES.md"}),  # case-sensitive: notes.MD stays
    (["Dockerfile", ".dockerignore", "*"], set(TREE) - {"Dockerfile", ".dockerignore"}),  # always sent
    (["# a comment", "lib/../docs", "./main.go"], {"docs/a.md", "main.go"}),  # cleaned as Go does
    (["  #notes", "#main.go"], {"#notes"}),  # `#` starts a comment in the first column only
])
def test_dockers_documented_rules(tmp_path: Path, patterns: list[str], gone: set[str]) -> None:
    root = _files(tmp_path, TREE)
    sent = {p for p in sent_paths(root, read_patterns("\n".join(patterns))) if (root / p).is_file()}
    assert sent == set(TREE) - gone


def test_a_pattern_docker_refuses_is_a_located_step_error(tmp_path: Path) -> None:
    from buildsys.steps.docker import build_docker_image

    root = _files(tmp_path, ["Dockerfile", "flow.py"])
    for bad in ("[abc", "flow\\", "!"):
        with pytest.raises(BadPattern):
            sent_paths(root, [bad])
    (root / ".dockerignore").write_text("*.log\n[abc\n")
    ctx = Context(root=root, cwd=root)
    assert build_docker_image.files_hook is not None
    with pytest.raises(StepError) as err:
        build_docker_image.files_hook({"image_name": "x"}, ctx)
    assert str(root / ".dockerignore") in err.value.message
    assert "'[abc'" in err.value.message
