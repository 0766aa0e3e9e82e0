"""Griffe extension: the Sphinx roles of netmorph's docstrings become cross-references.

The docstrings name other objects with Sphinx roles (``:func:`deepen```, ``:mod:`.samepad```,
``:class:`~netmorph_core.torch.models.LlamaStyle```). Each role is resolved the way Python
resolves the name in the docstring's scope (relative module paths from the enclosing package)
and becomes an optional autorefs link: a link where the object is rendered in the API
reference, code text where it is not. A role naming nothing in the package is a warning, which
fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import griffe

logger = griffe.get_logger("griffe_sphinx_roles")

ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|exc|obj|const):`(~?)([\w.]+)`")
PACKAGE = "netmorph_core"


def _package_of(obj: griffe.Object) -> griffe.Object:
    """The package a relative import in ``obj``'s module starts from."""
    module = obj if obj.is_module else obj.module
    return module if module.is_init_module else module.parent


def _resolve(obj: griffe.Object, target: str) -> str | None:
    if target.startswith("."):
        base = _package_of(obj)
        for _ in range(len(target) - len(target.lstrip(".")) - 1):
            base = base.parent
        return f"{base.path}.{target.lstrip('.')}"
    if target.split(".")[0] == PACKAGE:
        return target
    head, _, rest = target.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        try:
            path = scope.resolve(head)
        except griffe.NameResolutionError:
            scope = scope.parent
            continue
        return f"{path}.{rest}" if rest else path
    return None


def _exists(collection: griffe.ModulesCollection, path: str) -> bool:
    try:
        collection.get_member(path)
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return False
    return True


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring's Sphinx roles once the package is loaded."""

    def on_package(
        self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: object
    ) -> None:
        if pkg.path != PACKAGE:
            return
        for obj in _walk(pkg):
            if obj.docstring is not None and ":" in obj.docstring.value:
                obj.docstring.value = ROLE.sub(
                    lambda m, o=obj: self._link(o, m, loader.modules_collection),
                    obj.docstring.value,
                )

    @staticmethod
    def _link(obj: griffe.Object, match: re.Match, collection: griffe.ModulesCollection) -> str:
        short, target = match.group(1), match.group(2)
        title = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
        path = _resolve(obj, target)
        if path is None or (path.startswith(PACKAGE) and not _exists(collection, path)):
            logger.warning("%s: %s names no object of the package", obj.path, match.group(0))
            return f"`{title}`"
        return f'<autoref identifier="{path}" optional><code>{title}</code></autoref>'


def _walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)
