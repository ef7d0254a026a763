"""mkdocs hooks for the documentation site (mkdocs.yml: ``hooks:``).

aioipc's docstrings use a little reStructuredText (:class:`X`, :meth:`y`, a lone ``::``
before a literal block), which Markdown shows verbatim. On the API page the role
prefixes and the lone ``::`` paragraphs are dropped; the code spans stay.
"""

from __future__ import annotations

import re
from typing import Any

# ":meth:" right before the code span Markdown made of the role's `target`.
_ROLE = re.compile(r":(?:class|meth|func|mod|attr|exc|data|obj|const):(?=<code>)")
_LITERAL_MARKER = re.compile(r"<p>::</p>\n?")


def on_page_content(html: str, page: Any, **kwargs: Any) -> str:
    if page.file.src_uri != "api.md":
        return html
    return _LITERAL_MARKER.sub("", _ROLE.sub("", html))
