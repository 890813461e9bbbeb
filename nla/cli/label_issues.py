"""``nla label-issues``: rank the training images whose labels are probably wrong (:mod:`nla.label_issues`), from a
checkpoint, with the data it was trained on; a Lightning command, parsed and set up by :mod:`nla.cli.lightning`."""

from __future__ import annotations

from typing import Any

from jsonargparse import Namespace

from nla import label_issues
from nla.errors import UserError


def run_label_issues(cli: Any, config: Namespace) -> None:
    """Apply the checkpoint's model to every training image and write the ranking; print where it went."""
    if not config.get("ckpt_path"):
        raise UserError("nla label-issues needs a trained model: pass --ckpt_path")
    found = label_issues.run(cli.trainer, cli.model, cli.datamodule, config.ckpt_path, config.top)
    report_label_issues(found)


def report_label_issues(found: dict[str, Any]) -> None:
    print(
        f"{found['images']} training images ranked, most suspicious first: {found['csv']} (top suspects: "
        f"{found['figure']})"
    )
    for method, scores in found.get("vs_truth", {}).items():
        if isinstance(scores, dict):
            print(
                f"  {method}: {scores['flagged']} flagged, precision {scores['precision']:.3f}, recall "
                f"{scores['recall']:.3f}, F1 {scores['f1']:.3f}, AUROC {scores['auroc']:.3f}"
            )
