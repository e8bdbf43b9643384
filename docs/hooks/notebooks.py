"""mkdocs hook: the executed notebooks in ``notebooks/`` become pages of the site.

mkdocs reads pages only from ``docs_dir``; the notebooks live at the repository root, beside
their jupytext sources. Rather than a copy (which goes stale) or a symbolic link (which not
every checkout keeps), this hook adds each ``notebooks/NN_name.ipynb`` to the site's files at
build time, read in place, as ``notebooks/NN_name.ipynb`` under the site's root. It runs before
mkdocs-jupyter's own ``on_files`` (higher priority), which then renders them as pages. The
jupytext sources ``notebooks/*.py`` are never added, so they never become pages.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

NOTEBOOKS = "notebooks"
PATTERN = "[0-9][0-9]_*.ipynb"


@event_priority(100)
def on_files(files: Files, config) -> Files:
    """Add every ``notebooks/NN_name.ipynb`` of the repository to the site's files."""
    root = Path(config["config_file_path"]).resolve().parent
    for path in sorted((root / NOTEBOOKS).glob(PATTERN)):
        files.append(
            File(
                f"{NOTEBOOKS}/{path.name}",
                src_dir=str(root),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
