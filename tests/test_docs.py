"""The README and docs/ pages: every relative link resolves, and the config reference names every recipe field.

The README links into docs/ and docs/ pages link one level up (`../mogen/...`): a moved file or a renamed
heading breaks a link silently on GitHub, so these tests read the markdown the way GitHub does (links outside
code, `#anchor` = the heading's slug) and check each target in the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from mogen.config import Recipe, RewardConfig

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
MD_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"<(?:img|a)\s[^>]*?(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def prose(text: str) -> str:
    """The markdown without fenced code blocks and inline code spans (links there are not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    body = prose(text)
    return MD_LINK.findall(body) + HTML_LINK.findall(body)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not `-`/`_`), spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown_file: Path) -> set[str]:
    """Every heading anchor of a markdown file, with GitHub's -1, -2 suffixes for repeated headings."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", markdown_file.read_text())):
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def test_the_slug_rule_matches_githubs_for_headings_with_code_and_punctuation() -> None:
    assert github_slug("Memory knobs (all in the recipe; set them with `--set key=value`)") == (
        "memory-knobs-all-in-the-recipe-set-them-with---set-keyvalue"
    )
    assert github_slug("1. Algorithm comparison") == "1-algorithm-comparison"
    assert github_slug("SD3.5 and FLUX.1") == "sd35-and-flux1"


def test_links_are_found_in_prose_only() -> None:
    text = "[a](x.md) ![b](img/y.png) `[c](not_a_link.md)`\n```\n[d](in_code.md)\n```\n<img src=\"z.png\" width=9>"
    assert links(text) == ["x.md", "img/y.png", "z.png"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_into_the_repository(page: Path) -> None:
    broken = []
    for target in links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not checked offline
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(f"{target}: no such file or folder")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{anchor} in {resolved.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_readme_links_every_docs_page() -> None:
    readme_targets = {(ROOT / t.partition("#")[0]).resolve() for t in links((ROOT / "README.md").read_text())}
    missing = [p.name for p in PAGES[1:] if p.resolve() not in readme_targets]
    assert not missing, f"README.md's Documentation list does not link: {missing}"


def recipe_field_names() -> list[str]:
    """`section.field` for every field of a recipe section, the bare name for reward entries and top-level values."""
    names = []
    for section, field in Recipe.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += [f"{section}.{sub}" for sub in annotation.model_fields]
        elif section == "rewards":
            names += list(RewardConfig.model_fields)
        else:
            names.append(section)
    return names


def test_the_config_reference_names_every_recipe_field() -> None:
    reference = (ROOT / "docs" / "recipes.md").read_text()
    missing = [name for name in recipe_field_names() if f"`{name}`" not in reference]
    assert not missing, f"docs/recipes.md (Config reference) does not document: {missing}"
    assert "model.name" in recipe_field_names() and "kl_budget" in recipe_field_names()
