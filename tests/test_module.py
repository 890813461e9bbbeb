"""NLAModule as glue: training_step trains with exactly the criterion, on one forward pass over the images and
(only when the criterion needs them) their mirrors; evaluation and prediction take plain batches too."""

import warnings

import pytest
import torch

from nla import Criterion, CriterionConfig, NLAModule
from nla.batch import FaceBatch, MediaBatch
from nla.nonfinite import LossWatch, NonFiniteError


def module(**criterion):
    torch.manual_seed(0)
    return NLAModule(backbone="test_resnet", num_classes=7, criterion=CriterionConfig(schedule_epochs=10, **criterion))


def batch(n=6, size=32):
    torch.manual_seed(1)
    return torch.randn(n, 3, size, size), torch.tensor([0, 1, 2, 3, 4, 5])[:n]


def count_forward_images(model):
    seen = []
    model.model.conv1.register_forward_hook(lambda m, inputs, output: seen.append(len(inputs[0])))
    return seen


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
@pytest.mark.parametrize(
    "criterion",
    [
        {},
        {"consistency": "none"},
        {"naw": False, "consistency": "l1"},
        {"loss": "focal", "naw": False, "consistency": "cam"},
    ],
)
def test_training_step_returns_the_criterions_loss(criterion):
    nla = module(**criterion)
    images, labels = batch()
    seen = count_forward_images(nla)
    out = nla.training_step((images, labels), 0)
    mirrored = CriterionConfig(**criterion).uses_mirror
    assert seen == [12 if mirrored else 6]  # one pass, with the mirrors only when the loss uses them
    with torch.no_grad():
        views = torch.cat([images, images.flip(-1)]) if mirrored else images
        features, logits = nla.features_and_logits(views)
        expected = Criterion(nla.criterion.config)(
            logits[:6].float(),
            labels,
            0,
            10,
            logits_mirror=logits[6:] if mirrored else None,
            features=features[:6] if mirrored else None,
            features_mirror=features[6:] if mirrored else None,
            classifier_weight=nla.model.get_classifier().weight,
        )
    assert out["loss"].item() == pytest.approx(expected.total.item(), rel=1e-5)
    assert out["loss"].requires_grad and out["probs"].shape == (6, 7)
    assert ("weights" in out) == nla.criterion.config.naw


@pytest.mark.parametrize("consistency", ["none", "jsd"])
def test_a_face_batch_s_mirrors_are_computed_only_for_a_consistency_term(consistency):
    """nla's DataModules deliver every training batch with its mirrors; CE must not pay a forward and backward pass
    over them (the face-start study's CE cells once cost as much as NLA's)."""
    nla = module(consistency=consistency)
    images, labels = batch()
    seen = count_forward_images(nla)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nla.training_step(FaceBatch(images, labels, views=torch.cat([images, images.flip(-1)])), 0)
    assert seen == [12 if consistency == "jsd" else 6]


def test_a_face_batch_with_its_mirrors_is_used_as_it_is():
    nla = module()
    images, labels = batch()
    mirrors = torch.randn_like(images)  # deliberately not the flip: the given mirrors must be the ones used
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        given = nla.training_step(FaceBatch(images, labels, views=torch.cat([images, mirrors])), 0)["loss"]
        flipped = nla.training_step((images, labels), 0)["loss"]
    assert given.item() != pytest.approx(flipped.item())


def test_lightning_moves_a_batch_with_its_own_to_keeping_the_image_inside_the_views():
    from lightning.fabric.utilities.apply_func import move_data_to_device

    images, labels = batch()
    trained = FaceBatch(images, labels, torch.arange(6), error=["", "x"]).with_views(torch.cat([images, images]))
    moved = move_data_to_device(trained, torch.device("meta"))
    assert isinstance(moved, FaceBatch) and moved.error == ["", "x"]
    assert all(t.device.type == "meta" for t in (moved.image, moved.label, moved.index, moved.views))
    assert moved.image._base is moved.views and moved.image.shape == images.shape  # one copy, not two
    separate = FaceBatch(images, labels, views=torch.cat([images, images.flip(-1)]))  # as the workers collate it
    moved = move_data_to_device(separate, torch.device("meta"))
    assert moved.image._base is None and moved.image.shape == images.shape and moved.views.shape[0] == 12
    media = MediaBatch(images, path=["a.jpg"] * 6, ok=torch.ones(6, dtype=torch.bool), box=torch.zeros(6, 4))
    moved = move_data_to_device(media, torch.device("meta"))
    assert isinstance(moved, MediaBatch) and moved.path == media.path
    assert moved.ok.device.type == moved.box.device.type == "meta" and moved.frame is None


def test_prediction_takes_media_batches_pairs_or_images_alone():
    nla = module().eval()
    images, labels = batch()
    pair = nla.predict_step((images, labels), 0)
    alone = nla.predict_step(images, 0)
    assert pair["probs"].shape == (6, 7) and torch.equal(pair["label"], labels)
    assert torch.allclose(pair["probs"], alone["probs"]) and torch.allclose(alone["probs"].sum(1), torch.ones(6))
    media = nla.predict_step(MediaBatch(images, path=[str(i) for i in range(6)]), 0)
    assert media["path"][0] == "0" and "image" not in media and media["probs"].shape == (6, 7)


def test_the_backbone_waits_for_the_classes_and_weights_are_checked_for_finiteness():
    lazy = NLAModule(backbone="test_resnet")
    assert lazy.model is None
    with pytest.raises(RuntimeError, match="built from the data's classes"):
        lazy(torch.randn(1, 3, 32, 32))
    lazy.build(["happy", "sad"])
    assert lazy.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 2) and lazy.hparams.num_classes == 2
    lazy.check_finite_weights()
    with torch.no_grad():
        lazy.model.fc.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"weights became non-finite \(model.fc.weight\)"):
        lazy.check_finite_weights()


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"lr": -1.0}, "lr=-1.0 must be a finite positive number"),
        ({"lr": float("nan")}, "lr=nan must be a finite positive number"),
        ({"lr": float("inf")}, "lr=inf must be a finite positive number"),
        ({"weight_decay": -0.1}, "weight_decay=-0.1"),
    ],
)
def test_bad_optimiser_settings_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        NLAModule(backbone="test_resnet", **bad)


def test_library_batches_and_labels_are_taken_or_refused_in_one_line():
    """Dict batches raised KeyError 0; a label outside the classes, torch's or torchmetrics' message about shapes."""
    nla = module()
    images, labels = batch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        as_dict = nla.training_step({"image": images, "label": labels}, 0)["loss"]
        as_pair = nla.training_step((images, labels), 0)["loss"]
        assert as_dict.item() == pytest.approx(as_pair.item())
        with pytest.raises(ValueError, match=r"needs its images under 'image'; it has \['pixels'\]"):
            nla.training_step({"pixels": images}, 0)
        wrong = labels.clone()
        wrong[3] = 9
        with pytest.raises(ValueError, match="a training batch has label 9; the model has 7 classes, labels 0..6"):
            nla.training_step((images, wrong), 0)
        with pytest.raises(ValueError, match="a val batch has label 9; the model has 7 classes"):
            nla.validation_step((images, wrong), 0)


def test_a_non_finite_loss_in_another_process_stops_this_one_too():
    """Under DDP the loss watch takes the processes' maximum (``agree``): a step whose loss is finite here and not in
    another process is skipped and stops the run here too, with NaN for the loss parts this process did not have."""
    one = torch.tensor(1.0)
    alone = LossWatch()
    alone.note(one, (one, one), 2, 17)
    alone.check()  # a finite step, one process: nothing to stop
    watch = LossWatch()
    watch.agree = lambda flag: torch.maximum(flag, torch.ones(()))  # another process's loss was not finite
    watch.note(one, (one, one), 2, 17)
    with pytest.raises(NonFiniteError, match=r"epoch 2, step 17: classification=nan, consistency=nan"):
        watch.check()
