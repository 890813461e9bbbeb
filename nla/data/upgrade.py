"""Reading what nla 0.2 wrote: its DataModule's flat settings (``noise_rate``, ``image_size``, ...) in today's
groups (``protocol.noise_rate``, ``preprocessing.image_size``, ...), for its checkpoints and for the one line that
names an old option's new key."""

from __future__ import annotations

from typing import Any

#: Where each setting of nla 0.2's flat DataModule went: ``noise_rate`` is now ``protocol.noise_rate``, ...
MOVED_OPTIONS: dict[str, str] = {
    **{
        name: f"protocol.{name}"
        for name in (
            "train_label_file",
            "noise_rate",
            "noise_seed",
            "noise_source",
            "noise_kind",
            "noise_matrix",
            "imbalance_factor",
            "long_tail_seed",
            "long_tail_class_order",
        )
    },
    **{name: f"holdout.{name}" for name in ("val_fraction", "num_folds", "fold", "group_pattern")},
    "split_seed": "holdout.seed",
    **{name: f"preprocessing.{name}" for name in ("image_size", "mean", "std")},
    "cache_dir": "cache.dir",
    "cache_resolution": "cache.resolution",
    "max_cache_gb": "cache.max_gb",
    "detect_faces": "faces.detect",
    "faces": "faces.choice",
    "face_detector": "faces.detector",
    "align_faces": "faces.align",
    "predict_root": "prediction.root",
    "fps": "prediction.fps",
    "draw_faces": "prediction.draw_faces",
}


def upgrade_settings(saved: dict[str, Any]) -> dict[str, Any]:
    """A DataModule's saved settings in today's groups: an nla 0.2 checkpoint's flat ``noise_rate`` becomes
    ``protocol: {noise_rate: ...}``, and so on."""
    upgraded: dict[str, Any] = {}
    for key, value in saved.items():
        moved = MOVED_OPTIONS.get(key)
        if moved is None or (key == "faces" and isinstance(value, dict)):
            upgraded[key] = value
            continue
        group, name = moved.split(".")
        upgraded.setdefault(group, {})
        if isinstance(upgraded[group], dict):
            upgraded[group][name] = value
    return upgraded
