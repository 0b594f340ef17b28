"""The docs site's hook for links to repository files: existing ones become paths, missing ones are reported."""

import importlib.util
from pathlib import Path

from support.paths import REPO

HOOK = REPO / "scripts" / "mkdocs_hooks.py"


def _hook():
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_links_out_of_docs_are_checked_and_shown_as_paths(tmp_path: Path) -> None:
    (tmp_path / "docs" / "usage").mkdir(parents=True)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "lora.yaml").write_text("x: 1\n")
    page = tmp_path / "docs" / "usage" / "fit.md"
    text = (
        "[`configs/lora.yaml`](../../configs/lora.yaml) and [its config](../../configs/lora.yaml#top), "
        "[gone](../../configs/gone.yaml), [a page](../method.md#3-head), [web](https://example.org/a.md), "
        "![figure](../fig.png)"
    )
    out, missing = _hook().rewrite_repo_links(text, page, tmp_path / "docs", tmp_path)
    assert out == (
        "`configs/lora.yaml` and its config (`configs/lora.yaml`), "
        "[gone](../../configs/gone.yaml), [a page](../method.md#3-head), [web](https://example.org/a.md), "
        "![figure](../fig.png)"
    )
    assert missing == ["../../configs/gone.yaml"]
