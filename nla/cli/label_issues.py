"""``nla label-issues``: rank the training images whose labels are probably wrong (:mod:`nla.label_issues`), from a
checkpoint, with the data it was trained on; a Lightning command, parsed and set up by :mod:`nla.cli.lightning`."""

from __future__ import annotations

from typing import Any, Literal, Optional

from jsonargparse import Namespace
from jsonargparse.typing import PositiveInt

from nla import label_issues
from nla.errors import UserError


def add_label_issues_options(parser: Any) -> None:
    parser.add_argument("--top", type=PositiveInt, default=36, help="suspects shown in label_issues.png")
    parser.add_argument(
        "--write_labels",
        type=Optional[Literal["drop", "relabel"]],
        default=None,
        help="also write cleaned_labels.txt: the training labels without the suspects (drop) or with the model's "
        "label for them (relabel); retrain with --data.train_label_file cleaned_labels.txt",
    )
    parser.add_argument(
        "--suspects",
        type=Optional[PositiveInt],
        default=None,
        help="how many of the ranking's first images --write_labels drops or relabels (default: every image whose "
        "prediction disagrees with its label)",
    )


def run_label_issues(cli: Any, config: Namespace) -> None:
    """Apply the checkpoint's model to every training image and write the ranking; print where it went."""
    if not config.get("ckpt_path"):
        raise UserError("nla label-issues needs a trained model: pass --ckpt_path")
    if config.get("suspects") and not config.get("write_labels"):
        raise UserError("--suspects says how many images --write_labels drops or relabels; give --write_labels too")
    found = label_issues.run(
        cli.trainer, cli.model, cli.datamodule, config.ckpt_path, config.top, config.write_labels, config.suspects
    )
    report_label_issues(found)


def report_label_issues(found: dict[str, Any]) -> None:
    print(
        f"{found['images']} training images ranked, most suspicious first: {found['csv']} (top suspects: "
        f"{found['figure']})"
    )
    if "cleaned" in found:
        cleaned = found["cleaned"]
        print(
            f"cleaned labels ({cleaned['how']}: {cleaned['suspects']} images, {cleaned['kept']} in the file): "
            f"{cleaned['file']}; retrain with --data.train_label_file {cleaned['file']}"
        )
    for method, scores in found.get("vs_truth", {}).items():
        if isinstance(scores, dict):
            print(
                f"  {method}: {scores['flagged']} flagged, precision {scores['precision']:.3f}, recall "
                f"{scores['recall']:.3f}, F1 {scores['f1']:.3f}, AUROC {scores['auroc']:.3f}"
            )
