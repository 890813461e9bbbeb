"""The eight FER classes' names and every spelling of them nla accepts (``happy`` for ``happiness``, ...), without
PyTorch: for matching classes by name (:mod:`nla.classes`) and comparing runs (``nla compare``)."""

from __future__ import annotations

# Every spelling nla accepts for the eight FER classes, mapped to one canonical name.
SYNONYMS: dict[str, str] = {
    **{name: "anger" for name in ("anger", "angry", "an")},
    **{name: "contempt" for name in ("contempt", "contemptuous", "co")},
    **{name: "disgust" for name in ("disgust", "disgusted", "di")},
    **{name: "fear" for name in ("fear", "fearful", "afraid", "fe")},
    **{name: "happiness" for name in ("happiness", "happy", "joy", "ha")},
    **{name: "neutral" for name in ("neutral", "neutrality", "ne")},
    **{name: "sadness" for name in ("sadness", "sad", "sa")},
    **{name: "surprise" for name in ("surprise", "surprised", "su")},
}


def canonical(name: str) -> str:
    """The canonical FER class name of ``name`` (case and surrounding space ignored), or the name lowered."""
    key = name.strip().lower()
    return SYNONYMS.get(key, key)
