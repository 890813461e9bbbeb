"""``nla label-issues``: rank the training images whose labels are probably wrong (:mod:`nla.label_issues`), from a
checkpoint, with the data it was trained on; a Lightning command, parsed and set up by :mod:`nla.cli.lightning`."""

from __future__ import annotations

import importlib.util
from typing import Any, Literal, Optional, Union

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
        "label for them (relabel); retrain with --data.protocol.train_label_file cleaned_labels.txt",
    )
    parser.add_argument(
        "--suspects",
        type=Union[PositiveInt, Literal["contradicted", "confident_learning"]],
        default="contradicted",
        help="which images --write_labels drops or relabels: the ranking's first N, every image whose prediction "
        "disagrees with its label (contradicted), or per class as many as confident learning estimates, NAW's "
        "ranking choosing which (confident_learning; needs pip install 'nla[cleanlab]')",
    )


def run_label_issues(cli: Any, config: Namespace) -> None:
    """Apply the checkpoint's model to every training image and write the ranking; print where it went."""
    if not config.get("ckpt_path"):
        raise UserError("nla label-issues needs a trained model: pass --ckpt_path")
    suspects = config.get("suspects", "contradicted")
    if suspects != "contradicted" and not config.get("write_labels"):
        raise UserError("--suspects says which images --write_labels drops or relabels; give --write_labels too")
    if suspects == "confident_learning" and importlib.util.find_spec("cleanlab") is None:
        raise UserError(
            "--suspects confident_learning counts with cleanlab, which is not installed: pip install 'nla[cleanlab]'"
        )
    found = label_issues.run(
        cli.trainer, cli.model, cli.datamodule, config.ckpt_path, config.top, config.write_labels, suspects
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
            f"{cleaned['file']}; retrain with --data.protocol.train_label_file {cleaned['file']}"
        )
    for method, scores in found.get("vs_truth", {}).items():
        if isinstance(scores, dict):
            print(
                f"  {method}: {scores['flagged']} flagged, precision {scores['precision']:.3f}, recall "
                f"{scores['recall']:.3f}, F1 {scores['f1']:.3f}, AUROC {scores['auroc']:.3f}"
            )
