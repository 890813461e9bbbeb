"""``nla predict`` from a checkpoint alone: folders of aligned faces, photos and videos found, cropped and named."""

import csv
import shutil

import pytest

from nla.cli import main
from nla.data.sources import rafdb
from tests.conftest import NO_LOGGER


@pytest.mark.slow
def test_predict_from_a_checkpoint_alone(trained_run, tmp_path, capsys):
    import cv2
    import numpy as np

    from tests.fakes import synthetic_image

    faces = tmp_path / "faces"
    (faces / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(faces / "one.jpg"), synthetic_image(0, 7, 40, rng))
    cv2.imwrite(str(faces / "a" / "two.png"), synthetic_image(3, 7, 30, rng, gray=True))
    (faces / "a" / "broken.jpg").write_bytes(b"not really a jpeg")
    huge_png(faces / "a" / "huge.png", 40_000)  # a valid PNG above OpenCV's pixel limit: its row, not a traceback
    from PIL import Image

    Image.fromarray(synthetic_image(1, 7, 30, rng)).save(faces / "moving.gif")
    (faces / "notes.txt").write_text("the photos of the 3rd")
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    args = [
        "predict",
        "--ckpt_path",
        str(run / "checkpoints" / "last.ckpt"),
        "--data.prediction.root",
        str(faces),
        *NO_LOGGER,
        "--trainer.enable_progress_bar",
        "false",
    ]
    main(args)
    rows = list(csv.DictReader(open(run / "predict" / "predictions.csv")))
    names = ["a/broken.jpg", "a/huge.png", "a/two.png", "moving.gif", "notes.txt", "one.jpg"]
    assert [r["path"].split("faces/")[1] for r in rows] == names
    errors = {name: row["error"] for name, row in zip(names, rows)}
    assert "has more pixels than OpenCV decodes" in errors["a/huge.png"] and rows[1]["prediction"] == ""
    assert errors["notes.txt"].startswith("not an image or a video file nla reads") and rows[4]["prediction"] == ""
    rows = [row for name, row in zip(names, rows) if name in ("a/broken.jpg", "a/two.png", "moving.gif", "one.jpg")]
    assert list(rows[0]) == [
        "path",
        "prediction",
        *[f"prob_{c}" for c in ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]],
        "error",
    ]
    for row in rows[1:]:
        assert row["prediction"] in set(rafdb.CLASSES) and row["error"] == ""
        assert sum(float(v) for k, v in row.items() if k.startswith("prob_")) == pytest.approx(1.0, abs=1e-4)
    assert rows[0]["prediction"] == "" and "cannot decode" in rows[0]["error"]
    first = (run / "predict" / "predictions.csv").read_bytes()
    main(args)  # a second prediction never overwrites the first
    assert (run / "predict-1" / "predictions.csv").is_file() and (
        run / "predict" / "predictions.csv"
    ).read_bytes() == first
    assert "predictions for 6 images written to" in capsys.readouterr().out
    main([*args[:4], str(faces / "one.jpg"), *args[5:]])  # one image file
    (single,) = csv.DictReader(open(run / "predict-2" / "predictions.csv"))
    assert single["path"] == str(faces / "one.jpg") and single["prediction"] == rows[3]["prediction"]
    assert all(float(single[k]) == pytest.approx(float(v), abs=1e-5) for k, v in rows[3].items() if "prob_" in k)
    assert "predictions for 1 image written to" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.realdata
def test_predict_finds_the_face_in_a_photo_and_says_when_there_is_none(trained_run, tmp_path):
    import cv2
    import numpy as np

    from nla.data import read_rafdb
    from tests.conftest import real_dataset
    from tests.fakes import background, composites

    photos = tmp_path / "photos"
    photos.mkdir()
    made = composites(read_rafdb(real_dataset("rafdb"), "test").paths, 3, seed=5)
    for k, (photo, _, _) in enumerate(made):
        cv2.imwrite(str(photos / f"photo{k}.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(photos / "wall.png"), background(300, 300, np.random.default_rng(0)))
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    main(
        [
            "predict",
            "--ckpt_path",
            str(run / "checkpoints" / "last.ckpt"),
            "--data.prediction.root",
            str(photos),
            "--data.faces.detect",
            "true",
            *NO_LOGGER,
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    rows = {r["path"].rsplit("/", 1)[1]: r for r in csv.DictReader(open(run / "predict" / "predictions.csv"))}
    assert rows["wall.png"]["prediction"] == "" and rows["wall.png"]["error"] == "no face found"
    assert rows["wall.png"]["face_x"] == ""
    found = [name for name in rows if name != "wall.png" and rows[name]["prediction"]]
    assert found, rows  # the test faces are found (76% of 300 in benchmarks/results/face-detection.json)
    for name in found:
        k = int(name[len("photo") : -len(".png")])
        box = tuple(int(rows[name][key]) for key in ("face_x", "face_y", "face_width", "face_height"))
        from nla.faces import box_iou

        assert box_iou(box, made[k][1]) > 0.5  # the crop covers the pasted face


def huge_png(path, side: int) -> None:
    """A valid grey PNG of ``side`` x ``side`` pixels in a few hundred bytes (rows of zeros compress to nothing)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    rows = b"".join(packer.compress(b"\x00" * (side + 1)) for _ in range(4)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
