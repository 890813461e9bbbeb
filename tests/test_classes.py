"""A dataset's classes matched to a model's by name, never by position."""

import pytest

from nla.classes import match_classes
from nla.data import DataError

RAFDB = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
FERPLUS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]


def test_another_order_and_spelling_is_matched_by_name():
    match = match_classes(FERPLUS, RAFDB)
    assert [RAFDB[k] if k is not None else None for k in match.to_model] == [
        "Neutral",
        "Happiness",
        "Surprise",
        "Sadness",
        "Anger",
        "Disgust",
        "Fear",
        None,
    ]
    assert match.unmatched == ["contempt"] and not match.identity
    folders = match_classes(["angry", "happy", "sad", "surprised", "fearful", "disgusted"], RAFDB)
    assert [RAFDB[k] for k in folders.to_model] == ["Anger", "Happiness", "Sadness", "Surprise", "Fear", "Disgust"]
    assert match_classes(RAFDB, RAFDB).identity


def test_unmatchable_or_ambiguous_classes_stop():
    with pytest.raises(DataError, match="none of the data's classes"):
        match_classes(["0", "1", "2"], RAFDB)
    with pytest.raises(DataError, match="'happy' and 'Happiness' both match"):
        match_classes(["happy", "Happiness"], RAFDB)
    with pytest.raises(DataError, match="name 'anger' twice"):
        match_classes(RAFDB, ["angry", "anger"])
