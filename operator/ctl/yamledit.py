"""Set values in a block-style YAML document without losing its comments or layout (pure).

Local mode's spec is a file the user owns (often in Git). ``mlrollout promote`` or
``undo`` against a local run changes only the values it must, in place, so the file stays
the user's: every other line, comment and key order is kept. Positions come from PyYAML's
node marks; only the edited scalar or the inserted lines change.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import yaml

Path_ = tuple[str, ...]


class YamlEditError(ValueError):
    """The document cannot be edited in place (flow style, not a mapping, ...)."""


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    # A JSON string is a valid YAML double-quoted scalar.
    return json.dumps(str(value))


def _find(node: yaml.Node, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return k, v
    return None


def _line_start(text: str, index: int) -> int:
    return text.rfind("\n", 0, index) + 1


def _after_line(text: str, index: int) -> int:
    """Index just past the newline ending the line that holds ``index - 1``."""
    if index > 0 and text[index - 1] == "\n":
        return index
    nl = text.find("\n", index)
    return len(text) if nl < 0 else nl + 1


def _block_end(text: str, node: yaml.Node) -> int:
    """Where new lines go to append to ``node`` (a block mapping): after its last value.

    Trailing blank or comment-only lines that PyYAML counts into the node stay after
    the inserted lines.
    """
    last_value = node.value[-1][1]
    end = _after_line(text, last_value.end_mark.index)
    return end


def set_values(text: str, values: Mapping[Path_, object]) -> str:
    """``text`` with each path (``("spec", "controls", "promote")``) set to its value.

    Missing mappings on the way are created as block mappings; existing scalars are
    replaced in place. Raises :class:`YamlEditError` when that cannot be done safely.
    """
    for path, value in values.items():
        text = _set_one(text, path, value)
        # Check each step: a bad edit must not reach the user's file.
        yaml.safe_load(text)
    return text


def _set_one(text: str, path: Sequence[str], value: object) -> str:
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise YamlEditError(f"not valid YAML: {exc}") from None
    if not isinstance(root, yaml.MappingNode) or root.flow_style:
        raise YamlEditError("the document is not a block mapping")
    node: yaml.Node = root
    for depth, key in enumerate(path):
        if not isinstance(node, yaml.MappingNode) or node.flow_style:
            raise YamlEditError(f"{'.'.join(path[:depth])} is not a block mapping")
        found = _find(node, key)
        if found is None:
            return text if value is None else _insert(text, node, path[depth:], value)
        knode, vnode = found
        if depth == len(path) - 1 and value is None:
            # None removes the key (as null does in a merge patch).
            if not isinstance(vnode, yaml.ScalarNode):
                raise YamlEditError(f"{'.'.join(path)} is not a single value")
            start = _line_start(text, knode.start_mark.index)
            return text[:start] + text[_after_line(text, vnode.end_mark.index) :]
        if depth == len(path) - 1:
            if not isinstance(vnode, yaml.ScalarNode):
                raise YamlEditError(f"{'.'.join(path)} is not a single value")
            if vnode.start_mark.index == vnode.end_mark.index:
                # `key:` with nothing after it: put the value after the colon.
                colon = text.index(":", knode.end_mark.index)
                return text[: colon + 1] + " " + _scalar(value) + text[colon + 1 :]
            return text[: vnode.start_mark.index] + _scalar(value) + text[vnode.end_mark.index :]
        if isinstance(vnode, yaml.ScalarNode) and vnode.value in ("", "null", "~"):
            # `controls:` written empty (or null): replace it by a nested block.
            indent = " " * knode.start_mark.column
            lines = _lines(path[depth + 1 :], value, indent + "  ")
            start = vnode.start_mark.index
            end = vnode.end_mark.index
            line_end = _after_line(text, knode.end_mark.index)
            return text[:start].rstrip(" ") + "\n" + lines + text[max(end, line_end) :]
        node = vnode
    raise YamlEditError("empty path")


def _lines(path: Sequence[str], value: object, indent: str) -> str:
    out = []
    for i, key in enumerate(path):
        pad = indent + "  " * i
        if i == len(path) - 1:
            out.append(f"{pad}{key}: {_scalar(value)}\n")
        else:
            out.append(f"{pad}{key}:\n")
    return "".join(out)


def _insert(text: str, mapping: yaml.MappingNode, path: Sequence[str], value: object) -> str:
    if not mapping.value:
        raise YamlEditError("cannot add to an empty mapping in place")
    indent = " " * mapping.value[0][0].start_mark.column
    at = _block_end(text, mapping)
    if at == len(text) and text and not text.endswith("\n"):
        text += "\n"
        at = len(text)
    return text[:at] + _lines(path, value, indent) + text[at:]
