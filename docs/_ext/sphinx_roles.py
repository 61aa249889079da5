"""Griffe extension: turn the Sphinx roles of the package's docstrings into mkdocstrings cross-references.

The docstrings are Google style but cross-reference with Sphinx roles (``:class:`~lightning_fedmut.FedAvg```,
``:meth:`fit```, ``:func:`make_clients```), which read well in ``help()`` and in an editor. Markdown
would show them verbatim, so before mkdocstrings renders a docstring this extension rewrites each role:

- a target that resolves inside the loaded package becomes an autorefs link to its canonical path
  (``[`FedAvg`][lightning_fedmut.aggregators.fedavg.FedAvg]``); a strict build fails if that object is not
  rendered anywhere in the API reference;
- any other target (torch, Lightning, the standard library) becomes inline code;
- a literal block introduced with ``::`` keeps one colon;
- an ``Example:`` section (Napoleon reads it like ``Examples:``) becomes ``Examples:``, so its doctest
  renders as code rather than as an admonition of Markdown text;
- a module attribute documented by a ``#:`` comment above it (Sphinx's convention) gets that comment
  as its docstring.

Relative targets are looked up the way Sphinx does: in the object itself (a class naming its own method),
then in each enclosing scope, then in the package's top level.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?P<role>class|func|meth|mod|data|attr|exc|obj|const):`(?P<target>[^`]+)`")
_LITERAL_BLOCK = re.compile(r"(?<=\S)::$", re.MULTILINE)
_CALLABLE_ROLES = {"func", "meth"}
_EXAMPLE_SECTION = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.MULTILINE)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring once the object tree is complete."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if obj.is_alias:
            return
        if obj.docstring is None:
            comment = _comment_docstring(obj)
            if comment is None:
                return
            obj.docstring = griffe.Docstring(comment, parent=obj)
        text = obj.docstring.value
        text = _ROLE.sub(lambda m: self._replace(m, obj, loader), text)
        text = _LITERAL_BLOCK.sub(":", text)
        obj.docstring.value = _EXAMPLE_SECTION.sub(r"\g<indent>Examples:", text)

    def _replace(self, match: re.Match[str], obj: griffe.Object, loader: griffe.GriffeLoader) -> str:
        role, target = match["role"], match["target"].strip()
        short = target.startswith("~")
        target = target.lstrip("~.")
        title = target.rsplit(".", 1)[-1] if short else target
        if role in _CALLABLE_ROLES and not title.endswith(")"):
            title += "()"
        path = _resolve(target, obj, loader)
        if path is None:
            return f"`{title}`"
        return f"[`{title}`][{path}]"


def _comment_docstring(obj: griffe.Object) -> str | None:
    """The ``#:`` comment lines right above a module- or class-level attribute, joined, if any."""
    if not obj.is_attribute or obj.lineno is None or obj.parent is None or obj.parent.is_function:
        return None
    try:
        lines = obj.lines_collection[obj.filepath]
    except (KeyError, TypeError):
        return None
    found: list[str] = []
    index = obj.lineno - 2
    while index >= 0 and lines[index].strip().startswith("#:"):
        found.insert(0, lines[index].strip()[2:].strip())
        index -= 1
    return " ".join(found) or None


def _resolve(target: str, obj: griffe.Object, loader: griffe.GriffeLoader) -> str | None:
    """The canonical path of ``target`` seen from ``obj``, or ``None`` outside the loaded packages."""
    scopes: list[str] = []
    scope: griffe.Object | None = obj
    while scope is not None:
        scopes.append(scope.path)
        scope = scope.parent
    candidates = [target, *(f"{s}.{target}" for s in scopes)]
    for path in candidates:
        try:
            found = loader.modules_collection.get_member(path)
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        try:
            return found.final_target.path if found.is_alias else found.path
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
    return None
