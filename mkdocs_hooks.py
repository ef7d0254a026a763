"""mkdocs hooks for the documentation site (mkdocs.yml: ``hooks:``).

aioipc's docstrings use a little reStructuredText (:class:`X`, :meth:`y`, a lone ``::``
before a literal block), which Markdown shows verbatim. On the API page the role
prefixes and the lone ``::`` paragraphs are dropped; the code spans stay.

The API page is also checked: every name a public module exports must be rendered under
its public path (a class or function at its ``__module__.__qualname__``, which aioipc
sets to a public module; a constant or alias under some public module that exports it).
A name missing there fails the build.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

from aioipc._core.names import PUBLIC_MODULES

_ID = re.compile(r'id="(aioipc\.[\w.]+)"')

# ":meth:" right before the code span Markdown made of the role's `target`.
_ROLE = re.compile(r":(?:class|meth|func|mod|attr|exc|data|obj|const):(?=<code>)")
_LITERAL_MARKER = re.compile(r"<p>::</p>\n?")


def on_page_content(html: str, page: Any, **kwargs: Any) -> str:
    if page.file.src_uri != "api.md":
        return html
    missing = _not_rendered(set(_ID.findall(html)))
    if missing:
        raise PluginError(
            "docs/api.md renders no entry for these public names (under their public "
            "path): " + ", ".join(missing)
        )
    return _LITERAL_MARKER.sub("", _ROLE.sub("", html))


def _not_rendered(ids: set[str]) -> list[str]:
    # This checkout's aioipc, whatever the venv has installed.
    sys.path.insert(0, str(Path(__file__).parent))
    modules = {name: importlib.import_module(name) for name in PUBLIC_MODULES}
    missing = []
    for modname, module in modules.items():
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                continue
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__.startswith(
                "aioipc"
            ):
                places = {f"{obj.__module__}.{obj.__qualname__}"}
            else:
                places = {
                    f"{m}.{name}" for m, mod in modules.items() if getattr(mod, name, None) is obj
                }
            if not places & ids:
                missing.append(f"{modname}.{name}")
    return missing
