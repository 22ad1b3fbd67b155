"""docs/math.md: every function its tables name exists and its docstring cites the same paper and
equation; and the property example it shows runs."""

import importlib
import inspect
import re
from pathlib import Path

import pytest

MATH = Path(__file__).resolve().parents[1] / "docs" / "math.md"
ROW = re.compile(r"^\|\s*(?P<equation>[^|]+?)\s*\|.*\[`(?P<name>[\w.]+)`\]\((?P<path>[^)]+)\)\s*\|\s*(?P<cite>[^|]+?)\s*\|\s*$")
# "Eq. 4", "Eqs. 6–7", "Eqs. 5 and 13", "Algorithm 2", "Algorithms 1 and 5", "§3.2"
REFERENCE = re.compile(r"(Eqs?\.|Algorithms?|§)\s*(\d[\d.]*(?:\s*(?:–|-|,|and)\s*\d[\d.]*)*)")
YEAR = re.compile(r"\b(?:19|20)\d\d[a-z]?\b")


def rows():
    lines = MATH.read_text(encoding="utf-8").splitlines()
    return [match.groupdict() for match in map(ROW.match, lines) if match]


def references(text):
    """{("Eq", "7"), ("Algorithm", "1"), ("§", "3.2"), …} cited in ``text``, ranges expanded."""
    found = set()
    for kind, numbers in REFERENCE.findall(text):
        kind = kind.rstrip("s.").rstrip("s")
        for part in re.split(r"\s*(?:,|and)\s*", numbers):
            ends = re.split(r"\s*[–-]\s*", part)
            if len(ends) == 2 and ends[0].isdigit() and ends[1].isdigit():
                found.update((kind, str(n)) for n in range(int(ends[0]), int(ends[1]) + 1))
            else:
                found.add((kind, part.rstrip(".")))
    return found


def cited(docstring, paper, reference):
    """Whether ``docstring`` cites ``reference`` (e.g. "Eq. 12") after a mention of ``paper`` and
    before the next citation's year."""
    for mention in re.finditer(re.escape(paper) + r"(?![a-z])", docstring):
        rest = docstring[mention.end():]
        later = YEAR.search(rest)
        if references(reference) <= references(rest[: later.start()] if later else rest):
            return True
    return False


def resolve(name):
    module, *attributes = name.split(".")
    obj = importlib.import_module(f"minidiff.{module}")
    for attribute in attributes:
        obj = getattr(obj, attribute)
    return obj


def test_the_map_has_every_paper_the_issue_asks_for():
    cites = " ".join(row["cite"] for row in rows())
    for needed in ("Ho et al. 2020, Eq. 14", "Ho et al. 2020, Algorithm 2", "Nichol & Dhariwal 2021, Eq. 17",
                   "Song et al. 2021, Eq. 12", "Salimans & Ho 2022", "Hang et al. 2023", "Lu et al. 2022",
                   "Dhariwal & Nichol 2021, Eq. 11", "Song et al. 2021b, Eq. 6", "Song et al. 2021b, Eq. 13",
                   "Ho & Salimans 2021, Eq. 6", "Lugmayr et al. 2022, Algorithm 1"):
        assert needed in cites
    ddpm = set().union(*(references(row["equation"]) for row in rows() if row["cite"].startswith("Ho et al. 2020")))
    assert {("Eq", str(n)) for n in range(1, 15)} | {("Algorithm", "1"), ("Algorithm", "2")} <= ddpm


@pytest.mark.parametrize("row", rows(), ids=lambda row: f"{row['cite']} -> {row['name']}")
def test_each_mapped_function_exists_and_cites_its_equation(row):
    obj = resolve(row["name"])
    assert Path(MATH.parent, row["path"]).resolve() == Path(inspect.getsourcefile(obj)).resolve()
    paper, _, reference = row["cite"].rpartition(", ")
    assert cited(inspect.getdoc(obj) or "", paper, reference), f"{row['name']} does not cite {row['cite']}"


def test_a_wrong_citation_is_caught():
    assert cited("x (Ho et al. 2020, Eqs. 6–7).", "Ho et al. 2020", "Eq. 7")
    assert not cited("x (Ho et al. 2020, Eq. 6; Song et al. 2021, Eq. 7).", "Ho et al. 2020", "Eq. 7")
    assert not cited("x (Song et al. 2021b, Eq. 12).", "Song et al. 2021", "Eq. 12")


def test_the_property_example_runs():
    source = MATH.read_text(encoding="utf-8").split("```python\n")[-1].split("```")[0]
    namespace = {}
    exec(compile(source, str(MATH), "exec"), namespace)
    namespace["test_my_schedule"]()
