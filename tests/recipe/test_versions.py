"""Versions and ranges (mergepkg/recipe/versions.py): the table in its docstring, checked."""

from __future__ import annotations

import pytest

from mergepkg.recipe.versions import Range, Version, VersionError, newest

CASES = [
    ("^1.2.3", ["1.2.3", "1.9.0"], ["1.2.2", "2.0.0", "2.0.0-rc.1", "1.3.0-rc.1"]),
    ("1.2.3", ["1.2.3", "1.9.0"], ["2.0.0"]),
    ("^1.2", ["1.2.0", "1.99.99"], ["1.1.9", "2.0.0"]),
    ("^0.2.3", ["0.2.3", "0.2.99"], ["0.3.0", "0.2.2"]),
    ("^0.0.3", ["0.0.3"], ["0.0.4", "0.1.0"]),
    ("^0", ["0.0.0", "0.9.9"], ["1.0.0"]),
    ("~1.2.3", ["1.2.3", "1.2.9"], ["1.3.0", "1.2.2"]),
    ("~1.2", ["1.2.0", "1.2.9"], ["1.3.0"]),
    ("~1", ["1.0.0", "1.9.0"], ["2.0.0"]),
    ("=1.2.3", ["1.2.3"], ["1.2.4"]),
    ("=1.2", ["1.2.0", "1.2.7"], ["1.3.0"]),
    (">=1.0, <1.5", ["1.0.0", "1.4.9"], ["0.9.9", "1.5.0"]),
    (">1.2", ["1.3.0"], ["1.2.9"]),
    (">1.2.3", ["1.2.4"], ["1.2.3"]),
    ("<=1.2", ["1.2.9"], ["1.3.0"]),
    ("*", ["0.0.1", "9.9.9"], ["1.0.0-rc.1"]),
    (">=1.0.0-rc.1", ["1.0.0-rc.2", "1.0.0", "2.0.0"], ["1.0.0-beta", "1.1.0-rc.1"]),
    ("<1.3", ["1.2.9"], ["1.3.0", "1.3.0-rc.1"]),
    (">=1.3.0-rc.1, <1.3", [], ["1.3.0-rc.2", "1.3.0"]),  # <1.3 is below every 1.3.x
    (">=1.2", ["1.2.0", "5.0.0"], ["1.1.9"]),
]


@pytest.mark.parametrize("text,yes,no", CASES)
def test_range_table(text, yes, no):
    rng = Range.parse(text)
    assert [v for v in yes if not rng.allows(Version.parse(v))] == []
    assert [v for v in no if rng.allows(Version.parse(v))] == []


def test_precedence_follows_semver_spec():
    # the example list from semver.org, section 11
    order = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
    ]
    versions = [Version.parse(v) for v in order]
    shuffled = versions[3:] + versions[:3]
    assert sorted(shuffled) == versions
    assert Version.parse("1.0.0+build.5") == Version.parse("1.0.0")
    assert str(Version.parse("2.10.1-rc.1")) == "2.10.1-rc.1"


@pytest.mark.parametrize(
    "bad", ["1.0", "01.0.0", "v1.0.0", "1.0.0-", "", "1.0.0.0", "1.0.0 beta", "1.0.0-1\u0661", "1.0.0-01"]
)
def test_bad_versions(bad):
    with pytest.raises(VersionError, match="semantic version"):
        Version.parse(bad)


def test_a_version_too_long_to_name_a_file_is_refused():
    """It names the published recipe's file (255 bytes at most); its numbers are ints."""
    for text in ("1.0.0-" + "a" * 300, "1.0." + "9" * 5000):
        with pytest.raises(VersionError, match="at most 128"):
            Version.parse(text)
    assert str(Version.parse("1.0.0-" + "a" * 120)) == "1.0.0-" + "a" * 120


@pytest.mark.parametrize("bad", ["", "^", "latest", ">=x", "1.2.3.4", "^1.2, nope", "^01.2", "^1.2-rc.1", "1.*"])
def test_bad_ranges(bad):
    with pytest.raises(VersionError, match="range"):
        Range.parse(bad)


def test_newest():
    vs = [Version.parse(v) for v in ("0.1.0", "0.2.0", "0.2.5", "1.0.0")]
    assert str(newest(vs, Range.parse("^0.2"))) == "0.2.5"
    assert newest(vs, Range.parse("^2")) is None


@pytest.mark.parametrize("text", [">1", ">1.2", ">0", ">=1.0, >1.2", "<=1.2"])
def test_a_range_past_whole_versions_picks_no_pre_release(text):
    """`>1.2` reaches `>=1.3.0-0`: that bound's `-0` is not a pre-release the user named,
    so 1.3.0-rc.1 and 2.0.0-beta.1 stay out (`install alpha@>1` took 2.0.0-beta.1)."""
    rng = Range.parse(text)
    assert rng.pre_cores == frozenset()
    assert [v for v in ("1.3.0-rc.1", "2.0.0-beta.1", "1.0.0-rc.1") if rng.allows(Version.parse(v))] == []
    versions = [Version.parse(v) for v in ("1.2.5", "1.3.0", "1.4.0-rc.1", "2.0.0-beta.1")]
    assert str(newest(versions, Range.parse(">1.2"))) == "1.3.0"
