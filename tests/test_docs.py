"""The README stays a guide that tells the truth: its reason table is the code's, its links lead somewhere."""

import os
import re

import pytest

from genreclf.errors import Reason

pytestmark = pytest.mark.pure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()


def test_the_reason_table_lists_exactly_the_reasons_rows_can_give():
    table = README.split("### Why a file has no windows", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([^`]+)` \|", table, re.M)
    expected = [reason.replace("{seconds:g}", "N") for reason in Reason.all()]
    assert sorted(listed) == sorted(expected)
    assert Reason.too_short(66150 / 22050) == "shorter than one 3 s window"


def test_the_readme_is_a_guide_whose_links_exist():
    assert README.count("\n") <= 200
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        assert os.path.exists(os.path.join(ROOT, target)), target


DOCS = sorted(os.path.join("docs", n) for n in os.listdir(os.path.join(ROOT, "docs")) if n.endswith(".md"))


@pytest.mark.parametrize("doc", ["README.md", *DOCS])
def test_every_relative_link_resolves_from_the_file_that_holds_it(doc):
    """Was: three links inside docs/ named docs/X.md, which from docs/ is docs/docs/X.md."""
    text = open(os.path.join(ROOT, doc)).read()
    here = os.path.dirname(os.path.join(ROOT, doc))
    broken = [t for t in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
              if not re.match(r"[a-z]+://|mailto:", t) and not os.path.exists(os.path.join(here, t))]
    assert not broken, f"{doc}: {broken}"


def test_one_preset_is_called_recommended_everywhere():
    """The README names the recommended preset; no doc recommends another (was: quality.toml in two)."""
    recommended = set(re.findall(r"`(conf/[\w-]+\.toml)` recommended", README))
    assert len(recommended) == 1, recommended
    for doc in ["README.md", *DOCS]:
        for line in open(os.path.join(ROOT, doc)):
            presets = [(m.start(), m.group()) for m in re.finditer(r"conf/[\w-]+\.toml", line)]
            for word in re.finditer(r"(?i)recommend", line) if presets else ():
                nearest = min(presets, key=lambda p: abs(p[0] - word.start()))[1]  # what the word is said of
                assert nearest in recommended, f"{doc}: {line.strip()}"
