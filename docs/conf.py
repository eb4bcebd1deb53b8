"""Sphinx configuration of tapengine's documentation (``make docs``).

The build is offline: no intersphinx, no theme or extension fetched at build time. The API
reference is generated from the docstrings of the installed package (``make build`` installs it
editable into ``.venv``), the compiled modules included: they are built with
``embedsignature=True``, so their signatures come from the docstrings.
"""

from __future__ import annotations

import builtins
import enum
import importlib
import inspect
import re
import sys

from docutils import nodes
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

import tapengine

project = "tapengine"
author = "The tapengine developers"
copyright = "the tapengine developers"
release = tapengine.__version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc"]

root_doc = "index"
exclude_patterns = ["_build"]
default_role = "literal"  # a stray `single backtick` renders as code, as in the README
highlight_language = "none"
add_function_parentheses = False  # pages write the arguments out where they matter
pygments_style = "sphinx"

# Docstrings are reST with ``double backticks``; signatures come from the code (Python) and from
# embedsignature (Cython). Type hints stay in the signature, where the reader expects them.
# ``ignore-module-all``: a module's ``__all__`` may re-export names defined elsewhere (``traffic``
# re-exports ``_pktgen.Generator``); each object is documented once, in the module defining it.
autodoc_default_options = {
    "members": True,
    "ignore-module-all": True,
    "undoc-members": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True
autoclass_content = "both"

# Names in signatures that live outside this project (numpy, pyroute2, the standard library) are
# not looked up anywhere: the build is offline and has no intersphinx inventory for them.
nitpicky = False

html_theme = "alabaster"
html_title = f"tapengine {release}"
html_theme_options = {
    "description": "A Linux packet engine for tun/tap devices",
    "fixed_sidebar": True,
    "show_relbars": True,
}
html_sidebars = {"**": ["about.html", "navigation.html", "relations.html", "searchbox.html"]}
html_show_sourcelink = False
html_copy_source = False


def _summary(obj: object) -> str:
    """The first paragraph of ``obj``'s own docstring (not one inherited from a base class)."""
    doc = inspect.cleandoc(getattr(obj, "__doc__", None) or "")
    name = getattr(obj, "__name__", None)
    paragraph: list[str] = []
    for line in doc.splitlines():
        line = line.strip()
        if name and not paragraph and line.startswith(f"{name}("):
            continue  # the signature embedsignature (Cython) or a dataclass put first
        if not line:
            if paragraph:
                break
            continue
        paragraph.append(line)
    if inspect.isclass(obj) and obj.__doc__ in {base.__doc__ for base in obj.__mro__[1:]}:
        return ""
    text = " ".join(paragraph)
    first = re.split(r"(?<=[a-z0-9)`'])\. (?=[A-Z`])", text, maxsplit=1)
    return first[0] + ("." if len(first) > 1 else "")


def _home(name: str, obj: object) -> str | None:
    """The module that defines ``obj`` (exported by ``tapengine`` as ``name``)."""
    module = getattr(obj, "__module__", None)
    if (inspect.isclass(obj) or inspect.isroutine(obj)) and module:
        return module
    for candidate in sorted(m for m in sys.modules if m.startswith("tapengine.")):
        if getattr(sys.modules[candidate], name, None) is obj:
            return candidate
    return None


class ExportsDirective(SphinxDirective):
    """``.. tapengine-exports::``: a table of every name in ``tapengine.__all__``, each linked to
    the module that defines it, so the list never drifts from the package."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 30 70", ""]
        lines += ["   * - name", "     - what it is (defined in)"]
        for name in sorted(tapengine.__all__, key=str.lower):
            if name.startswith("__"):
                continue
            obj = getattr(tapengine, name)
            module = _home(name, obj)
            qualname = getattr(obj, "__qualname__", name) if module else name
            defined = module and getattr(importlib.import_module(module), qualname, None) is obj
            ref = f":py:obj:`{name} <{module}.{qualname}>`" if defined else f"``{name}``"
            if inspect.isclass(obj) or inspect.isroutine(obj):
                text = _summary(obj)
            else:
                text = f"a ``{type(obj).__module__}.{type(obj).__qualname__}``"
            where = f"(``{module}``)" if module else ""
            lines += [f"   * - {ref}", f"     - {text} {where}".rstrip()]
        node = nodes.section()
        nested_parse_with_titles(self.state, StringList(lines, source="tapengine-exports"), node)
        return node.children


def _public_bases(app, name, obj, options, bases: list) -> None:
    """Cython's ``cpdef enum`` derives from a private ``__Pyx_FlexibleEnumBase``: show what it is
    to a reader, an ``IntEnum``."""
    private = [base for base in bases if getattr(base, "__name__", "").startswith("__Pyx")]
    if private:
        bases[:] = [base for base in bases if base not in private]
        if not any(isinstance(base, type) and issubclass(base, enum.IntEnum) for base in bases):
            bases.insert(0, enum.IntEnum)


def _drop_self(app, what, name, obj, options, signature, return_annotation):
    """embedsignature writes ``self`` into the signature of a Cython method; Python's own methods
    are shown without it, and so are these."""
    if what == "method" and signature and re.match(r"\(self\b", signature):
        signature = "(" + signature[len("(self") :].lstrip(", ")
    return signature, return_annotation


def _exact_builtins(app: Sphinx, doctree: nodes.document) -> None:
    """A built-in type in a signature (``bytes``) must not link to an attribute that happens to
    share its name (``GenResult.bytes``): look such names up exactly, never by suffix. With no
    inventory for the standard library they stay plain text."""
    for node in doctree.findall(addnodes.pending_xref):
        if node.get("refdomain") == "py" and node.get("reftarget") in _BUILTINS:
            node.attributes.pop("refspecific", None)


_BUILTINS = frozenset(dir(builtins))


def setup(app: Sphinx) -> dict[str, bool]:
    app.add_directive("tapengine-exports", ExportsDirective)
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("autodoc-process-signature", _drop_self)
    app.connect("doctree-read", _exact_builtins)
    return {"parallel_read_safe": True}
