"""The label-noise figures of a training epoch (nla/memorisation.py): what a model that predicts the given labels and
one that predicts the true labels did with the flips, the two detectors' AUROC, and the module's wiring from its
training steps to the record, summary.json, the loggers and nla compare."""

import csv
import json
from functools import partial

import pytest
import torch

from nla import CriterionConfig, NLAModule
from nla.batch import EpochOutputs, FaceBatch, concatenated_over_ranks
from nla.cli import main, run_cli
from nla.memorisation import NoiseHistory, detection_auroc, label_noise_record
from nla.records import RunSummary
from tests.conftest import CONFIGS, fit_args

TRUE = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 1, 2])
GIVEN = torch.tensor([0, 1, 2, 3, 4, 5, 6, 3, 5, 0])  # the last three flipped


def confident(labels: torch.Tensor, classes: int = 7) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, classes).float() * 0.9 + 0.1 / classes


def test_a_model_that_predicts_the_given_labels_memorises_every_flip():
    weights = torch.linspace(0.1, 1.0, 10)
    record = label_noise_record(4, confident(GIVEN), GIVEN, TRUE, weights)
    assert (record.epoch, record.images, record.flipped) == (4, 10, 3)
    assert (record.memorised, record.corrected, record.clean_fit) == (1.0, 0.0, 1.0)
    assert record.auroc_p_given == 0.5  # every image's given label is as probable: no signal
    assert record.auroc_naw_weight == 0.0  # the flipped images carry the three highest weights
    assert record.weight_flipped == pytest.approx(weights[7:].mean().item())


def test_a_model_that_predicts_the_true_labels_corrects_every_flip():
    record = label_noise_record(0, confident(TRUE), GIVEN, TRUE, torch.tensor([0.9] * 7 + [0.1] * 3))
    assert (record.memorised, record.corrected, record.clean_fit) == (0.0, 1.0, 1.0)
    assert record.auroc_p_given == 1.0  # the flipped images' given labels are the least probable
    assert record.auroc_naw_weight == 1.0


def test_the_auroc_ranks_with_ties_and_needs_both_groups():
    flipped = torch.tensor([True, False, False, True])
    assert detection_auroc(torch.tensor([0.1, 0.5, 0.5, 0.5]), flipped) == pytest.approx(0.75)
    assert detection_auroc(torch.tensor([0.1, 0.2]), torch.tensor([True, True])) is None
    assert label_noise_record(0, confident(TRUE), TRUE, TRUE, torch.ones(10)) is None  # nothing flipped


def test_the_module_measures_its_own_training_steps():
    """Training steps through NLAModule: the epoch's outputs are gathered by image index, CE gets the weight NAW would
    give, and an epoch is measured once."""
    torch.manual_seed(0)
    criterion = CriterionConfig(naw=False, consistency="none", schedule_epochs=10)
    module = NLAModule(backbone="test_resnet", num_classes=7, criterion=criterion)
    module.label_noise.true_labels = TRUE  # by training index
    given = GIVEN.clone()  # flipped: training images 7, 8 and 9

    def predicts_the_given_label(images):  # each image carries its training index in its first pixel
        return images, 50 * confident(given[images[:, 0, 0, 0].long()])

    module._forward = predicts_the_given_label
    order = torch.tensor([9, 2, 7, 4, 0, 8, 1, 3, 6, 5])  # the images in a shuffled order
    for part in (order[:6], order[6:]):
        images = torch.zeros(len(part), 3, 8, 8)
        images[:, 0, 0, 0] = part.float()
        module.training_step(FaceBatch(images, given[part], part), 0)
    outputs = module.epoch_training_outputs()
    assert outputs["index"].tolist() == order.tolist()
    assert outputs["weights"].shape == (10,) and (outputs["weights"] > 0).all()  # the weights NAW would give
    record = module.label_noise.measure(2, lambda: outputs)
    assert (record.flipped, record.memorised, record.corrected, record.clean_fit) == (3, 1.0, 0.0, 1.0)
    assert module.label_noise.measure(2, lambda: outputs) is None and len(module.label_noise.records) == 1
    module.epoch_outputs.reset()
    assert module.epoch_training_outputs() is None


def beside_another_process(theirs, calls):
    """Lightning's ``all_gather`` as this process (rank 0) sees it, where the other process holds ``theirs``, its
    columns in the order the gathering asks for them: first the count of rows, then each column padded to the longest.
    ``calls`` records the shapes asked for."""
    pending = iter(theirs)

    def all_gather(tensor):
        calls.append(tuple(tensor.shape))
        if tensor.dim() == 0:
            return torch.stack([tensor, torch.tensor(len(theirs[0]))])
        column = next(pending)
        other = column.new_zeros(tensor.shape)
        other[: len(column)] = column
        return torch.stack([tensor, other])

    return all_gather


def test_a_distributed_epoch_holds_every_process_s_images_once():
    """Two processes' shares of an epoch, the other's shorter and padded by its sampler with an image of this one's:
    gathered end to end, each image once, its fields still together."""
    mine, theirs = torch.tensor([9, 2, 7, 4, 0]), torch.tensor([8, 1, 9])
    outputs = EpochOutputs()
    outputs.add({"probs": confident(GIVEN[mine]), "labels": GIVEN[mine], "index": mine})
    other = [confident(GIVEN[theirs]) * 0.5, GIVEN[theirs], theirs]  # halved: the other process's own probabilities
    calls = []
    gathered = outputs.gather(partial(concatenated_over_ranks, all_gather=beside_another_process(other, calls)))
    assert calls == [(), (5, 7), (5,), (5,)]  # the counts once, then each column padded to the longer share
    assert gathered["index"].tolist() == [9, 2, 7, 4, 0, 8, 1]
    assert torch.equal(gathered["labels"], GIVEN[gathered["index"]])
    assert torch.equal(gathered["probs"][:5], confident(GIVEN[mine])) and torch.equal(
        gathered["probs"][5:], other[0][:2]
    )
    assert outputs.gather() is gathered  # kept: a second reader gathers nothing


def test_an_image_drawn_twice_in_an_epoch_counts_once_as_its_first_draw():
    """A sampler that draws with replacement (``--data.balanced_sampler``) gives flipped image 7 twice: predicted
    first as its given label, later as its true one. The figures count it once, memorised, as a process of a
    distributed run would (which keeps each image's first occurrence)."""
    drawn = torch.tensor([7, 0, 8, 7])
    probs = confident(GIVEN[drawn])
    probs[3] = confident(TRUE[7:8])[0]
    outputs = EpochOutputs()
    outputs.add({"probs": probs[:2], "labels": GIVEN[drawn[:2]], "index": drawn[:2]})
    outputs.add({"probs": probs[2:], "labels": GIVEN[drawn[2:]], "index": drawn[2:]})
    gathered = outputs.gather()
    assert gathered["index"].tolist() == [7, 0, 8] and torch.equal(gathered["probs"], probs[:3])
    history = NoiseHistory()
    history.true_labels = TRUE
    record = history.measure(0, lambda: {**gathered, "weights": torch.ones(3)})
    assert (record.images, record.flipped, record.memorised) == (3, 2, 1.0)


def test_noise_history_round_trips_through_a_checkpoint():
    history = NoiseHistory()
    history.true_labels = TRUE
    outputs = {"probs": confident(GIVEN), "labels": GIVEN, "weights": torch.ones(10), "index": torch.arange(10)}
    assert history.measure(0, lambda: outputs) is not None
    restored = NoiseHistory()
    restored.load(json.loads(json.dumps(history.to_list())))
    assert restored.records == history.records
    unindexed = NoiseHistory()
    unindexed.true_labels, said = TRUE, []
    assert unindexed.measure(0, lambda: {"probs": confident(GIVEN), "labels": GIVEN}, said.append) is None
    assert said == ["the training batches do not say which images they hold (index): no label-noise figures"]
    assert unindexed.true_labels is None  # said once: no later epoch tries again


@pytest.mark.slow
def test_a_noisy_run_records_every_epoch_and_a_clean_one_none(rafdb_root, tmp_path, capsys):
    noisy, clean = tmp_path / "noisy", tmp_path / "clean"
    logger = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir"]
    ce = ["--config", str(CONFIGS / "methods" / "ce.yaml")]
    noise = ["--config", str(CONFIGS / "noise" / "30.yaml"), "--data.protocol.noise_source", "generate"]
    run_cli(fit_args(rafdb_root, noisy, *ce, *noise, *logger, str(noisy), epochs=2))
    run_cli(fit_args(rafdb_root, clean, *ce, *logger, str(clean), epochs=1))
    summary = RunSummary.read(noisy)
    assert [r.epoch for r in summary.label_noise] == [0, 1]
    assert all(r.flipped == round(0.3 * 42) and r.images == 42 for r in summary.label_noise)
    assert all(0 <= r.memorised + r.corrected <= 1 and r.auroc_naw_weight is not None for r in summary.label_noise)
    assert RunSummary.read(clean).label_noise == []
    assert "label_noise" not in json.loads((clean / "summary.json").read_text())
    (metrics,) = noisy.glob("**/metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("noise/memorised")]
    assert [float(r["noise/memorised"]) for r in rows] == pytest.approx([r.memorised for r in summary.label_noise])
    assert "noise/memorised" not in next(clean.glob("**/metrics.csv")).read_text()
    assert capsys.readouterr().out.count("flipped labels memorised") == 2  # the noisy run's two epoch lines
    main(["compare", str(noisy), str(clean), "--csv"])
    table = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    last = {row["run"]: row for row in table if row["evaluation"] == "last epoch"}
    assert float(last[str(noisy)]["memorised"]) == pytest.approx(100 * summary.label_noise[-1].memorised, abs=0.01)
    assert last[str(clean)]["memorised"] == ""
