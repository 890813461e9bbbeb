""":class:`NLATrainer`, Lightning's Trainer with nla's own command, ``label-issues``: the documented way to add a
command to LightningCLI (a Trainer method of that name, its typed arguments the command's options)."""

from __future__ import annotations

import importlib.util
from typing import Any, Literal, Optional, Union

from jsonargparse.typing import PositiveInt
from lightning.pytorch import LightningDataModule, LightningModule, Trainer

from nla import label_issues as ranking
from nla.errors import UserError

Suspects = Union[PositiveInt, Literal["contradicted", "confident_learning"]]


class NLATrainer(Trainer):
    """Lightning's Trainer, and :meth:`label_issues`."""

    def label_issues(
        self,
        model: LightningModule,
        datamodule: Optional[LightningDataModule] = None,
        ckpt_path: Optional[str] = None,
        top: PositiveInt = 36,
        write_labels: Optional[Literal["drop", "relabel"]] = None,
        suspects: Suspects = "contradicted",
    ) -> dict[str, Any]:
        """Rank the training images whose labels are probably wrong, by the NAW weight of a checkpoint.

        Args:
            model: The trained model (from ``ckpt_path``).
            datamodule: The data it was trained on (from the checkpoint unless given).
            ckpt_path: A checkpoint written by ``nla fit``.
            top: Suspects shown in label_issues.png.
            write_labels: Also write cleaned_labels.txt: the training labels without the suspects (drop) or with the
                model's label for them (relabel); retrain with --data.protocol.train_label_file cleaned_labels.txt.
            suspects: Which images --write_labels drops or relabels: the ranking's first N, every image whose
                prediction disagrees with its label (contradicted), or per class as many as confident learning
                estimates, NAW's ranking choosing which (confident_learning; needs pip install 'nla[cleanlab]').
        """
        if not ckpt_path:
            raise UserError("nla label-issues needs a trained model: pass --ckpt_path")
        if suspects != "contradicted" and not write_labels:
            raise UserError("--suspects says which images --write_labels drops or relabels; give --write_labels too")
        if suspects == "confident_learning" and importlib.util.find_spec("cleanlab") is None:
            raise UserError(
                "--suspects confident_learning counts with cleanlab, which is not installed: "
                "pip install 'nla[cleanlab]'"
            )
        found = ranking.run(self, model, datamodule, ckpt_path, top, write_labels, suspects)
        report(found)
        return found


def report(found: dict[str, Any]) -> None:
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
