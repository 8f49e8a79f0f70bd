"""Key paths found in TOML text: `[[array]]` tables, whose i-th header is element i, and
names holding a dot, quoted in the path as TOML quotes them."""

from __future__ import annotations

import pytest

from mergepkg.recipe.locate import locate, segments

SLERP = """\
[steps.s]
method = "slerp"
inputs = ["ft1"]

[[steps.s.params.t]]
filter = "self_attn"
value = [0, 1]

[[steps.s.params.t]]
filter = "mlp"
value = [1, 1.3, 0]

[[steps.s.params.t]]
value = 0.5

[steps.other]
method = "linear"
"""


@pytest.mark.parametrize(
    ("key", "line"),
    [
        ("steps.s.params.t[0]", 5),
        ("steps.s.params.t[1]", 9),
        ("steps.s.params.t[2]", 13),
        ("steps.s.params.t[1].value", 11),
        ("steps.s.params.t", 5),  # the whole array: its first element
        ("steps.s.inputs[0]", 3),
        ("steps.other.method", 17),
    ],
)
def test_an_array_of_tables_element_is_its_own_header(key, line):
    assert locate(SLERP, key) == line


DOTTED = """\
[steps.pre]
inputs = ["a", "b"]

[steps."soup.v2"]
method = "ties"
inputs = [{ model = "a", weight = 0.95 }, { model = "b", weight = 0.05 }]
"""


def test_a_quoted_name_with_a_dot_is_one_segment():
    from mergepkg.recipe.locate import key_name

    quote = 'a"b'
    assert key_name("soup.v2") == '"soup.v2"' and key_name("soup_v2-1") == "soup_v2-1"
    assert segments(f"steps.{key_name('soup.v2')}.inputs[1]") == ["steps", "soup.v2", "inputs", 1]
    assert segments(f"steps.{key_name(quote)}.x") == ["steps", quote, "x"]
    assert locate(DOTTED, 'steps."soup.v2"') == 4
    assert locate(DOTTED, 'steps."soup.v2".inputs[1]') == 6
    assert locate(DOTTED, "steps.soup.v2.inputs[1]") == 6  # a path made without quotes still finds it


def test_a_text_s_headers_are_scanned_once_for_every_key_located_in_it(monkeypatch):
    """A recipe's errors and warnings locate many keys in one text: scanning its headers
    again for each made locating a key of every step quadratic in the steps."""
    import mergepkg.recipe.locate as module

    scans = []
    scan = module._scan
    monkeypatch.setattr(module, "_scan", lambda text: scans.append(text) or scan(text))
    module._headers.cache_clear()
    text = "".join(f'[steps.s{i}]\nmethod = "linear"\ninputs = ["a", "b"]\n' for i in range(200))
    assert [locate(text, f"steps.s{i}.inputs[1]") for i in range(200)] == [3 * i + 3 for i in range(200)]
    assert len(scans) == 1
