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
