"""The counterfactual text view: every listed term swapped both ways, case and punctuation kept, her/his resolved
by the next word, deterministic, user word files, clear errors; usable through TextViews and mmssl augment's
view builder."""

from __future__ import annotations

import pytest

from mmssl.data.text_views import TextViews, ViewConfig, build_views
from mmssl.data.text_views.counterfactual import BUILTIN, CounterfactualSwap, read_pairs, swap_table
from mmssl.errors import DataError
from mmssl.schema import from_dict


def view(**kw) -> CounterfactualSwap:
    (built,) = build_views(from_dict(ViewConfig, {"type": "counterfactual", **kw}), seed=0)
    return built


@pytest.mark.parametrize("text, want", [
    ("He gave her the book.", "She gave him the book."),
    ("I saw her dog, and HIS cat.", "I saw his dog, and HER cat."),
    ("The king's wife said: \"that is hers\".", "The queen's husband said: \"that is his\"."),
    ("She told him about her father-in-law yesterday.", "He told her about his mother-in-law yesterday."),
    ("The book is his. His mother came.", "The book is hers. Her father came."),
    ("MEN and Women,\n\tboys  and girls!", "WOMEN and Men,\n\tgirls  and boys!"),
])
def test_swaps_both_directions_keeping_case_and_everything_else(text, want):
    v = view()
    assert v.swap(text) == want
    assert v.swap(want) == text  # and back again
    assert v([text]) == [want]


def test_is_deterministic_and_leaves_other_texts_alone():
    v = view()
    texts = ["the man ran", "a red square", "the queen of hearts"]
    out = v(texts)
    assert out == ["the woman ran", None, "the king of hearts"]  # None: nothing to swap (the other view is used)
    assert v(texts[::-1], indices=[2, 1, 0]) == out[::-1] == view(name="other")(texts[::-1])
    assert CounterfactualSwap(seed=5)(texts) == out  # no randomness: the seed changes nothing
    assert v(["mankind", "shepherd", "Hestia"]) == [None, None, None]  # whole words only
    # through TextViews as an objective uses it: an unchanged text is returned as it is
    assert TextViews([{"type": "counterfactual"}], seed=1)(texts, [0, 1, 2]) == ["the woman ran", "a red square",
                                                                                 "the king of hearts"]


def test_builtin_lists_are_consistent():
    for name, pairs in BUILTIN.items():
        table = swap_table(pairs)
        assert len(pairs) >= 12, name
        words = [w for pair in pairs for w in pair]
        assert all(table[w] != w for w in words)
        once = {w for w in words if words.count(w) == 1}
        assert all(table[table[w]] == w for w in once if table[w] in once)  # a swap undoes itself
    assert read_pairs("religion") == BUILTIN["religion"]
    v = view(word_pairs="religion")
    assert v.swap("The Church and the Mosque.") == "The Mosque and the Church."
    assert v.swap("he") == "he"  # the gender list is not part of it


def test_a_user_file_of_word_pairs(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("# colour terms\nblue, orange\n\nCat,dog  # trailing comment\n")
    v = view(word_pairs=str(path))
    assert v.swap("A blue Cat and an orange dog.") == "A orange Dog and an blue cat."
    assert v.describe()["pairs"] == 2
    for bad, why in (("blue orange\n", "line 1"), ("blue,blue\n", "line 1"), ("a,b,c\n", "line 1"),
                     ("ok,fine\nice cream,cake\n", "line 2"), ("# nothing\n", "holds no")):
        path.write_text(bad)
        with pytest.raises(DataError, match=why):
            view(word_pairs=str(path))
    with pytest.raises(DataError, match="neither a built-in list"):
        view(word_pairs=str(tmp_path / "missing.txt"))
