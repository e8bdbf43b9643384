"""mkdocs hook: Sphinx roles in docstrings render as plain code.

The docstrings cross-reference with Sphinx roles (``:func:`name```), which Markdown renders as
the role's text followed by code: ``:func:<code>name</code>``. This drops the role's text, so
the reader sees ``name`` as code, as on the guide pages.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):(?=<code>)")


def on_page_content(html: str, page, config, files) -> str:
    """Remove the Sphinx role prefix before every inline code span."""
    return _ROLE.sub("", html)
