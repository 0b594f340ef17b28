"""mkdocs hook: links from a documentation page to repository files outside docs/ (configs, source, benchmarks).

On GitHub such a link opens the file; the built site holds no repository to link into. So the hook checks
that the file exists (a missing one is a warning, which ``mkdocs build --strict`` turns into a failure, as
mkdocs does for pages) and shows its repository path as code instead of a dead link.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

log = logging.getLogger("mkdocs.hooks.repo_links")
LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^)\s#]+)(#[^)\s]*)?\)")


def rewrite_repo_links(markdown: str, page: Path, docs: Path, repo: Path) -> tuple[str, list[str]]:
    """Links leaving ``docs`` become text + repository path; returns the new text and the missing targets."""
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        text, target = match.group(1), match.group(2)
        if "://" in target or target.startswith(("/", "mailto:")):
            return match.group(0)
        path = (page.parent / unquote(target)).resolve()
        if path.is_relative_to(docs):
            return match.group(0)  # mkdocs validates links between pages itself
        if not path.is_relative_to(repo) or not path.exists():
            missing.append(target)
            return match.group(0)
        rel = path.relative_to(repo).as_posix()
        return text if rel in text else f"{text} (`{rel}`)"

    return LINK.sub(replace, markdown), missing


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    docs = Path(config["docs_dir"]).resolve()
    repo = Path(config["config_file_path"]).resolve().parent
    text, missing = rewrite_repo_links(markdown, Path(page.file.abs_src_path), docs, repo)
    for target in missing:
        log.warning("Doc file '%s' links to '%s', which is not in the repository", page.file.src_uri, target)
    return text
