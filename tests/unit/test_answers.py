import pytest

from vlmprobe.vlm.answers import is_correct, match_choice, normalize_answer


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes.", "yes"),
        ("Yes!", "yes"),
        ("  The   Red circle! ", "red circle"),
        ("An apple", "apple"),
        ("Three", "3"),
        ("twenty", "20"),
        ("1,000 cars", "1000 cars"),
        ("3.5", "3.5"),
        ("It's blue.", "its blue"),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


COLORS = ["red", "blue", "dark red"]


@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("Blue.", "blue"),  # exact after normalization
        ("the blue", "blue"),
        ("A", "red"),  # letter answers pick by position
        ("(b)", "blue"),
        ("B.", "blue"),
        ("c) dark red", "dark red"),
        ("D", None),  # no fourth choice
        ("I think it is blue", "blue"),  # the one choice found as whole words
        ("it is dark red", "dark red"),  # "red" only inside the longer "dark red"
        ("red or blue", None),  # several choices
        ("bluish", None),  # not a whole word
        ("purple", None),
    ],
)
def test_match_choice(prediction, expected):
    assert match_choice(prediction, COLORS) == expected


def test_match_choice_numbers_compare_as_digits():
    assert match_choice("three", ["1", "2", "3"]) == "3"


@pytest.mark.parametrize(
    "prediction, answer, choices, expected",
    [
        ("B", "blue", COLORS, True),
        ("Blue!", "Blue", COLORS, True),
        ("red or blue", "red", COLORS, False),
        ("A", "blue", COLORS, False),
        ("Yes, the triangle is on the left.", "yes", None, True),
        ("No.", "yes", None, False),
        ("no, yes", "yes", None, False),
        ("3 squares", "three", None, True),
        ("Three.", "3", None, True),
        ("there are 3", "3", None, False),
        ("13", "3", None, False),
        ("Red circle", "red", None, True),
        ("dark red", "red", None, False),
        ("reddish", "red", None, False),
        ("The cat", "cat", None, True),
    ],
)
def test_is_correct(prediction, answer, choices, expected):
    assert is_correct(prediction, answer, choices) is expected
