"""Checking a target model's answer against a dataset's ground truth.

Pure Python: the probe step calls these for every prediction, and the Airflow side may import
them without torch.
"""

from __future__ import annotations

import re
import string

_NUMBER_WORDS = {
    word: str(i)
    for i, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_ARTICLES = {"a", "an", "the"}
# Punctuation becomes a space, except inside numbers ("1,000" -> "1000", "3.5" stays "3.5").
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}\b)")
_PUNCTUATION = re.compile(r"(?!(?<=\d)\.(?=\d))[" + re.escape(string.punctuation) + r"]")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
# "A", "(b)", "B.", "c)", "D:" -- optionally followed by the option's text ("B. blue").
_LETTER_ANSWER = re.compile(r"^\s*\(?([A-Za-z])(?:\)|[.):](?:\s|$)|\s*$)")


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and articles, number words -> digits, collapse whitespace.

    ``"Yes."`` -> ``"yes"``, ``"The Red circle!"`` -> ``"red circle"``, ``"Three"`` -> ``"3"``.
    """
    text = _THOUSANDS_COMMA.sub("", text.lower().replace("'", ""))
    words = _PUNCTUATION.sub(" ", text).split()
    return " ".join(_NUMBER_WORDS.get(w, w) for w in words if w not in _ARTICLES)


def _key(text: str) -> str:
    # A choice that is only an article or a letter ("A") would normalize to nothing.
    return normalize_answer(text) or text.strip().strip(string.punctuation + " ").lower()


def _contains_words(haystack: str, needle: str) -> bool:
    return bool(needle) and f" {needle} " in f" {haystack} "


def match_choice(prediction: str, choices: list[str]) -> str | None:
    """The choice (as given in ``choices``) that ``prediction`` picks, or None.

    In order: a choice equal to the prediction after normalization; a letter answer
    (``"A"``, ``"(b)"``, ``"B."``, ``"c) blue"``) picks choice 0, 1, 2 ...; otherwise the one
    choice whose normalized text appears as whole words in the prediction. A choice that only
    appears inside a longer matching choice ("red" in "dark red") does not count; zero or
    several remaining matches give None.
    """
    if not choices:
        return None
    pred = _key(prediction)
    for choice in choices:
        if _key(choice) == pred:
            return choice
    letter = _LETTER_ANSWER.match(prediction)
    if letter:
        index = ord(letter.group(1).lower()) - ord("a")
        if index < len(choices):
            return choices[index]
    found = {_key(c): c for c in choices if _contains_words(pred, _key(c))}
    longest = [c for k, c in found.items() if not any(o != k and _contains_words(o, k) for o in found)]
    return longest[0] if len(longest) == 1 else None


def is_correct(prediction: str, answer: str, choices: list[str] | None = None) -> bool:
    """Whether ``prediction`` answers the question whose ground truth is ``answer``.

    Both sides are compared after :func:`normalize_answer`.

    - With ``choices`` (multiple choice): correct when :func:`match_choice` picks a choice
      equal to the answer. An answer that picks no choice, or several, is wrong.
    - Without choices (open question): correct when the prediction equals the answer, or
      starts with the answer as whole words. For yes/no and number answers (one word) this
      means the prediction's first word is the answer: ``"Yes, it is"`` is right for
      ``"yes"``, ``"3 squares"`` for ``"three"``; ``"there are 3"`` and ``"no, yes"`` are
      wrong. ``"red circle"`` is right for ``"red"``; ``"dark red"`` is not.
    """
    if choices:
        picked = match_choice(prediction, choices)
        return picked is not None and _key(picked) == _key(answer)
    pred, truth = normalize_answer(prediction), normalize_answer(answer)
    if not truth:
        return _key(prediction) == _key(answer)
    if truth in ("yes", "no") or _NUMBER.match(truth):
        return pred.split(" ", 1)[0] == truth
    return pred == truth or pred.startswith(truth + " ")
