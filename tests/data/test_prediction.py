"""``nla predict`` on photos and videos as users meet them: every face, video frames over time, files that cannot be
read, and the pieces behind it (frame sampling, face tracks, aligned crops)."""

import csv
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from nla.cli import main, run_cli
from nla.data.files import MediaError, list_media, video_frames
from nla.data.prediction import follow
from nla.faces import Face, FaceAlignment, LandmarkTemplate, aligned_crop, box_iou
from nla.faces.geometry import similarity
from tests.conftest import NO_LOGGER, real_dataset

QUIET = [*NO_LOGGER, "--trainer.enable_progress_bar", "false"]


def write_video(path, frames, fps=10.0, size=(96, 80)):
    """A video of ``frames`` RGB frames (or that many grey ramps), as OpenCV's own MP4 or MJPG writer makes it."""
    codec = "mp4v" if str(path).endswith(".mp4") else "MJPG"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)
    for frame in frames if not isinstance(frames, int) else range(frames):
        image = np.full((size[1], size[0], 3), (frame * 7) % 255, np.uint8) if isinstance(frame, int) else frame
        writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_video_frames_are_sampled_at_the_rate_asked_and_bad_files_say_why(tmp_path):
    video = write_video(tmp_path / "clip.mp4", 35)  # 3.5 s at 10 frames a second
    frames = list(video_frames(str(video), fps=2.0))
    assert [f.index for f in frames] == [0, 5, 10, 15, 20, 25, 30]
    assert [f.time_s for f in frames] == pytest.approx([0, 0.5, 1, 1.5, 2, 2.5, 3])
    assert frames[0].image.shape == (80, 96, 3) and frames[0].image.dtype == np.uint8
    assert len(list(video_frames(str(video), fps=30.0))) == 35  # never more than the video has
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "noise.avi").write_bytes(b"not a video" * 50)
    for name, reason in (("empty.mp4", "is an empty file"), ("noise.avi", "OpenCV cannot open it")):
        with pytest.raises(MediaError, match=reason):
            list(video_frames(str(tmp_path / name), fps=2))
    half = write_video(tmp_path / "half.avi", 40).read_bytes()
    (tmp_path / "cut.avi").write_bytes(half[: len(half) // 2])
    with pytest.raises(MediaError, match=r"stops decoding at frame \d+ of 40"):
        list(video_frames(str(tmp_path / "cut.avi"), fps=100))
    assert list_media(str(tmp_path)) == sorted(str(tmp_path / n) for n in ("clip.mp4", "cut.avi", "empty.mp4",
                                                                            "half.avi", "noise.avi"))  # fmt: skip


def test_faces_keep_their_track_across_frames():
    first = [Face((10, 10, 50, 50)), Face((200, 20, 40, 40))]
    numbers, tracks, next_number = follow([], first, 0)
    assert numbers == [0, 1] and next_number == 2
    moved = [Face((205, 24, 40, 40)), Face((14, 12, 50, 50)), Face((400, 400, 30, 30))]  # both moved; a new one
    numbers, tracks, next_number = follow(tracks, moved, next_number)
    assert numbers == [1, 0, 2] and next_number == 3


def test_an_aligned_crop_puts_the_eyes_and_mouth_where_the_template_has_them():
    image = np.zeros((200, 300, 3), np.uint8)
    eyes, mouth = ((120.0, 80.0), (160.0, 100.0)), (130.0, 140.0)  # a face tilted by atan(20 / 40)
    for x, y in (*eyes, mouth):
        cv2.circle(image, (int(x), int(y)), 3, (255, 255, 255), -1)
    template = LandmarkTemplate(left_eye=(0.3, 0.35), right_eye=(0.7, 0.35), mouth=(0.5, 0.75))
    crop = aligned_crop(image, Face((100, 60, 90, 100), eyes=eyes, mouth=mouth), 100, template=template)
    assert crop.shape == (100, 100, 3)
    matrix = similarity(np.asarray([*eyes, mouth]), np.asarray([(30, 35), (70, 35), (50, 75)]))
    left, right = (matrix @ np.asarray([*eyes[0], 1.0])), (matrix @ np.asarray([*eyes[1], 1.0]))
    assert abs(left[1] - right[1]) < 1e-4  # the eyes are level after the warp
    assert math.dist(left, (30, 35)) < 6 and math.dist(right, (70, 35)) < 6
    for x, y in (left, right):
        assert crop[round(y), round(x)].max() > 100  # the eye's dot is there in the crop
    boxed = aligned_crop(image, Face((100, 60, 90, 100)), 50, FaceAlignment(1.0, 0.0, 0.0))  # no landmarks: the box
    assert boxed.shape == (50, 50, 3)


def test_predict_on_videos_writes_a_row_per_frame_and_one_per_bad_file(trained_run, tmp_path, capsys):
    media = tmp_path / "media"
    media.mkdir()
    write_video(media / "clip.avi", 30)  # 3 s at 10 frames a second
    (media / "zero.mp4").write_bytes(b"")
    (media / "garbage.mov").write_bytes(b"\x00\x01" * 500)
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    ckpt = str(run / "checkpoints" / "last.ckpt")
    main(["predict", "--ckpt_path", ckpt, "--data.prediction.root", str(media), "--data.prediction.fps", "2", *QUIET])
    rows = list(csv.DictReader(open(run / "predict" / "predictions.csv")))
    clip = [r for r in rows if r["path"].endswith("clip.avi")]
    assert [r["frame"] for r in clip] == ["0", "5", "10", "15", "20", "25"]
    assert [float(r["time_s"]) for r in clip] == pytest.approx([0, 0.5, 1, 1.5, 2, 2.5])
    assert all(r["prediction"] and r["error"] == "" for r in clip)
    errors = {r["path"].rsplit("/", 1)[1]: r["error"] for r in rows if r["error"]}
    assert "empty file" in errors["zero.mp4"] and "cannot open" in errors["garbage.mov"]
    assert (run / "predict" / "timelines" / "clip.png").stat().st_size > 5000
    out = capsys.readouterr().out
    assert "predictions for 8 rows for 3 files written to" in out and "1 video timeline(s)" in out


def test_a_predict_run_that_could_predict_no_file_fails_keeping_its_rows(trained_run, tmp_path, capsys):
    """Every file unreadable: exit 0 and "predictions for 1 image written", though nothing was predicted."""
    media = tmp_path / "media"
    media.mkdir()
    (media / "notes.txt").write_text("not a photo")
    (media / "zero.jpg").write_bytes(b"")
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    with pytest.raises(SystemExit) as stopped:
        main(
            [
                "predict",
                "--ckpt_path",
                str(run / "checkpoints" / "last.ckpt"),
                "--data.prediction.root",
                str(media),
                *QUIET,
            ]
        )
    assert stopped.value.code not in (0, None)
    err = capsys.readouterr().err
    assert (
        f"nla: error: none of the 2 file(s) could be predicted; the rows of {run / 'predict' / 'predictions.csv'}"
        in err
    )
    rows = list(csv.DictReader(open(run / "predict" / "predictions.csv")))
    assert len(rows) == 2 and all(r["error"] for r in rows)


@pytest.mark.slow
def test_predict_keeps_no_outputs_in_memory_unless_asked(trained_run, tmp_path):
    """Rows go to the CSV batch by batch; Lightning keeping every batch's output too grows with a video's length."""
    write_video(tmp_path / "clip.avi", 4)
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    ckpt = str(run / "checkpoints" / "last.ckpt")
    args = ["predict", "--ckpt_path", ckpt, "--data.prediction.root", str(tmp_path / "clip.avi"), *QUIET]
    assert run_cli(args).trainer.predict_loop.return_predictions is False
    kept = run_cli([*args, "--return_predictions", "true"]).trainer.predict_loop
    assert kept.return_predictions is True and len(kept.predictions) > 0


@pytest.mark.slow
@pytest.mark.realdata
def test_every_face_of_photos_and_a_video_is_found_tracked_and_drawn(trained_run, tmp_path):
    from nla.data import load_image, read_rafdb
    from tests.fakes import background

    faces = [load_image(p) for p in read_rafdb(real_dataset("rafdb"), "test").paths[:3]]
    rng = np.random.default_rng(0)
    photo = background(360, 640, rng)
    boxes = [(40, 60, 150, 150), (250, 40, 130, 130), (450, 150, 160, 160)]
    for face, (x, y, w, _) in zip(faces, boxes):
        photo[y : y + w, x : x + w] = cv2.resize(face, (w, w))
    media = tmp_path / "media"
    media.mkdir()
    cv2.imwrite(str(media / "group.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(media / "group.jpg"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))  # the same stem: group-1.png
    frames = []
    for t in range(20):  # one face moving right, 2 s at 10 frames a second
        frame = background(240, 320, np.random.default_rng(1))
        frame[40:160, 20 + 5 * t : 140 + 5 * t] = cv2.resize(faces[0], (120, 120))
        frames.append(frame)
    write_video(media / "walk.avi", frames, size=(320, 240))
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    ckpt = str(run / "checkpoints" / "last.ckpt")
    args = ["--data.prediction.root", str(media), "--data.faces.detect", "true", "--data.faces.choice", "all"]
    main(
        [
            "predict",
            "--ckpt_path",
            ckpt,
            *args,
            "--data.prediction.draw_faces",
            "true",
            "--data.prediction.fps",
            "5",
            *QUIET,
        ]
    )
    rows = list(csv.DictReader(open(run / "predict" / "predictions.csv")))
    group = [r for r in rows if r["path"].endswith("group.png")]
    found = [tuple(int(r[k]) for k in ("face_x", "face_y", "face_width", "face_height")) for r in group]
    assert len(found) == 3 and all(max(box_iou(f, b) for f in found) > 0.4 for b in boxes)
    walk = [r for r in rows if r["path"].endswith("walk.avi") and r["prediction"]]
    assert len(walk) >= 8 and {r["track"] for r in walk} == {"0"}  # one face, followed through the frames
    assert (run / "predict" / "faces" / "group.png").stat().st_size > 10_000
    assert (run / "predict" / "timelines" / "walk.png").is_file()
    index = {Path(r["path"]).name: r["picture"] for r in csv.DictReader(open(run / "predict" / "faces" / "index.csv"))}
    assert sorted(index) == ["group.jpg", "group.png"] and sorted(index.values()) == ["group-1.png", "group.png"]
    (timeline,) = csv.DictReader(open(run / "predict" / "timelines" / "index.csv"))
    assert timeline["path"].endswith("walk.avi") and timeline["picture"] == "walk.png"


@pytest.mark.slow
@pytest.mark.realdata
def test_twenty_faces_a_huge_photo_and_a_video_without_faces(trained_run, tmp_path):
    from nla.data import load_image, read_rafdb
    from tests.fakes import background

    faces = [load_image(p) for p in read_rafdb(real_dataset("rafdb"), "test").paths[:20]]
    crowd = background(500, 1000, np.random.default_rng(2))
    for k, face in enumerate(faces):  # a 4 x 5 grid of 90 px faces
        x, y = 20 + 195 * (k % 5), 20 + 120 * (k // 5)
        crowd[y : y + 90, x : x + 90] = cv2.resize(face, (90, 90))
    huge = background(6000, 6000, np.random.default_rng(3))
    huge[2000:3500, 1000:2500] = cv2.resize(faces[0], (1500, 1500))
    media = tmp_path / "media"
    media.mkdir()
    cv2.imwrite(str(media / "crowd.png"), cv2.cvtColor(crowd, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(media / "huge.jpg"), cv2.cvtColor(huge, cv2.COLOR_RGB2BGR))
    write_video(
        media / "wall.avi", [background(120, 160, np.random.default_rng(4)) for _ in range(10)], size=(160, 120)
    )
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    ckpt = str(run / "checkpoints" / "last.ckpt")
    args = ["--data.prediction.root", str(media), "--data.faces.detect", "true", "--data.faces.choice", "all"]
    main(["predict", "--ckpt_path", ckpt, *args, *QUIET])
    rows = list(csv.DictReader(open(run / "predict" / "predictions.csv")))
    crowd_rows = [r for r in rows if r["path"].endswith("crowd.png") and r["prediction"]]
    assert len(crowd_rows) >= 19 and [r["face"] for r in crowd_rows] == [str(k) for k in range(len(crowd_rows))]
    (big,) = [r for r in rows if r["path"].endswith("huge.jpg")]
    box = tuple(int(big[k]) for k in ("face_x", "face_y", "face_width", "face_height"))
    assert box_iou(box, (1000, 2000, 1500, 1500)) > 0.6  # found at full resolution's coordinates
    wall = [r for r in rows if r["path"].endswith("wall.avi")]
    assert [r["frame"] for r in wall] == ["0", "5"]  # 1 s of video at 2 frames a second
    assert all(r["error"] == "no face found" and r["prediction"] == "" for r in wall)
