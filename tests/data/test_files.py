"""Listing and decoding files: every file of a prediction folder listed, and a folder that cannot be listed named."""

import os

import pytest

from nla.data import files
from nla.data.files import list_media


def test_every_visible_file_is_listed_and_a_folder_that_cannot_be_listed_is_named(tmp_path, monkeypatch):
    """A GIF or a text file got no row although the docs promise one; an unreadable folder vanished in silence."""
    for name in ("a.jpg", "b.gif", "notes.txt", ".hidden.jpg", "sub/c.mp4", ".cache/d.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert list_media(str(tmp_path)) == [str(tmp_path / n) for n in ("a.jpg", "b.gif", "notes.txt", "sub/c.mp4")]
    walk = os.walk

    def refusing(root, onerror=None):
        onerror(PermissionError(13, "Permission denied", str(tmp_path / "locked")))
        yield from walk(root, onerror=onerror)

    monkeypatch.setattr(files.os, "walk", refusing)
    with pytest.warns(UserWarning, match=r"1 folder\(s\) under .* cannot be listed.*locked \(Permission denied\)"):
        list_media(str(tmp_path))
