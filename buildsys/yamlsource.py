"""YAML with source locations: plain values plus a map from document path to file:line:col.

A text in the plain subset of block YAML most project files use is read line by line
(`yamllines`); any other is built from libyaml's events (`yamlevents`, which alone imports PyYAML).
Values are built straight from the parser's event stream (libyaml when installed), never from a
node tree: PyYAML's composer keeps a node with two marks for every scalar of the file, which for a
90,000-line project is ~150 MB and most of the load time. Anchors, aliases and merge keys behave
as in `safe_load` (an alias is a fresh copy of what the anchor built, its locations pointing at the
anchor), duplicate keys are errors (parsers silently keep the last one), and every mapping key and
item keeps its location, packed into one int until someone asks for it.

Locations are kept beside the containers, not by path: each mapping and list built at a located
place gets the packed locations of its keys or items, found by the container's identity, and a
path is looked up by walking the document down to it. Building a path tuple and hashing it for
every node cost a third of the load; the answers are the same (`tests/test_yamlsource.py` checks
every path of every corpus file against PyYAML's own node marks).
"""

from __future__ import annotations

from buildsys.located import Located, Path_, SeveralDocuments, YamlError
from buildsys.yamllines import load_lines

__all__ = ["Located", "Path_", "SeveralDocuments", "YamlError", "load_yaml"]


def load_yaml(text: str, file: str) -> Located:
    """Parse one YAML document with locations. Raises YamlError with a location on bad input."""
    found = load_lines(text, file)
    if found is not None:
        return found
    from buildsys.yamlevents import load_events  # PyYAML: imported for a file the line reader leaves

    return load_events(text, file)
