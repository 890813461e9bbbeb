""":class:`NLATrainer`, Lightning's Trainer with nla's own command, ``label-issues``: the documented way to add a
command to LightningCLI (a Trainer method of that name, its typed arguments the command's options); and whose options
that take an integer or a fraction keep an integer a user gives (:func:`integers_first`)."""

from __future__ import annotations

import importlib.util
import inspect
import re
import typing
from typing import Any, Literal, Optional, Union

from jsonargparse.typing import PositiveInt
from lightning.pytorch import LightningDataModule, LightningModule, Trainer

from nla import label_issues as ranking
from nla.errors import UserError

Suspects = Union[PositiveInt, Literal["contradicted", "confident_learning"]]


def integers_first(signature: inspect.Signature) -> inspect.Signature:
    """``signature`` with every ``Union`` of float and int annotated int first. The command line's parser tries a
    union's types in order, and Lightning annotates ``limit_train_batches`` and its kin ``Union[float, int, None]``:
    ``--trainer.limit_train_batches 1`` (one batch) would become 1.0 (all of them). An integer stays an integer, and
    a fraction, which int refuses, is a float."""

    def reordered(annotation: Any) -> Any:
        args = typing.get_args(annotation)
        if typing.get_origin(annotation) is Union and float in args and int in args:
            return Union[(int, *(arg for arg in args if arg is not int))]
        return annotation

    return signature.replace(
        parameters=[p.replace(annotation=reordered(p.annotation)) for p in signature.parameters.values()]
    )


#: What nla does with a Trainer option where Lightning's docstring, which the help shows, says otherwise.
NLA_HELP = {
    "precision": "Precision: null (nla's default) is bf16-mixed on a GPU and 32-true on a CPU; or 32-true, "
    "bf16-mixed, 16-mixed, ...",
    "default_root_dir": "The run directory: a fit writes its config, checkpoints, summary, figures and logs here "
    "(null: runs/<dataset>); validate, test and predict write into a fresh <command>[-n] folder inside it (null: the "
    "checkpoint's run).",
}


def reworded(docstring: str, texts: dict[str, str]) -> str:
    """``docstring`` (Google style) with the description of each parameter of ``texts`` replaced by its text; one it
    does not document once, as Lightning's own wording might one day not, keeps its help as it is (there the help is
    the only thing lost: tests/cli/test_seams.py tells before a release)."""
    for name, text in texts.items():
        found = list(re.finditer(rf"^(\s+){name}: .*?(?=\n\s*\n)", docstring, re.MULTILINE | re.DOTALL))
        if len(found) != 1:
            continue
        start, end = found[0].span()
        docstring = f"{docstring[:start]}{found[0].group(1)}{name}: {text}{docstring[end:]}"
    return docstring


class NLATrainer(Trainer):
    """Lightning's Trainer, and :meth:`label_issues`; its options as Lightning's (:func:`integers_first`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)

    # The parser reads a class's options from inspect.signature, which takes __signature__ where a function has one
    # (PEP 362): Lightning's own, integers first; the help texts from Lightning's docstring, with nla's where they
    # differ.
    __init__.__signature__ = integers_first(inspect.signature(Trainer.__init__))  # type: ignore[attr-defined]
    __init__.__doc__ = reworded(Trainer.__init__.__doc__ or "", NLA_HELP)

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
                estimates, NAW's ranking choosing which (confident_learning; needs pip install cleanlab).
        """
        if not ckpt_path:
            raise UserError("nla label-issues needs a trained model: pass --ckpt_path")
        if suspects != "contradicted" and not write_labels:
            raise UserError("--suspects says which images --write_labels drops or relabels; give --write_labels too")
        if suspects == "confident_learning" and importlib.util.find_spec("cleanlab") is None:
            raise UserError(
                "--suspects confident_learning counts with cleanlab, which is not installed: pip install cleanlab"
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
