"""The criterion that training uses: eq. 8 for NLA and every baseline, against the loss nla trained with before
the criterion existed (numbers recorded from that code on fixed logits), and against the authors' formula."""

import math

import pytest
import torch
import torch.nn.functional as F

from nla import losses
from nla.criterion import Criterion, CriterionConfig
from tests.conftest import preset

# Eq. 8 totals of the loss that NLAModule.training_step assembled before this criterion (nla 0.1.0), on the
# logits below, at epoch 5 of 60 unless the case says otherwise.
PARITY = {
    "nla_official": ({}, 2.1702338431368413),
    "nla_paper": ({"preset": "paper"}, 1.695684728184545),
    "naw_ce": ({"consistency": "none"}, 1.5508089843067663),
    "ce_jsd": ({"naw": False}, 1.9254214544946833),
    "naw_l1": ({"consistency": "l1"}, 4.665203446374807),
    "naw_cam": ({"consistency": "cam"}, 8.316542089789547),
    "ce": ({"naw": False, "consistency": "none"}, 1.305996595664608),
    "focal": ({"loss": "focal", "naw": False, "consistency": "none"}, 1.1201187632389675),
    "label_smoothing": ({"loss": "label_smoothing", "naw": False, "consistency": "none"}, 1.2934544542832462),
    "class_balanced": ({"loss": "class_balanced", "naw": False, "consistency": "none"}, 1.4159215660408837),
    "balanced_softmax": ({"loss": "balanced_softmax", "naw": False, "consistency": "none"}, 1.4284596416860742),
    "nla_epoch0": ({"epoch": 0}, 2.169547633918907),
    "nla_epoch59": ({"epoch": 59}, 2.1711781115581616),
}
COUNTS = [10, 3, 5, 40, 20, 6, 25]


def fixed_inputs():
    torch.manual_seed(0)  # the draws in this order are the ones the recorded numbers were computed on
    z, z_mirror = torch.randn(8, 7, dtype=torch.float64), torch.randn(8, 7, dtype=torch.float64)
    features, features_mirror = (
        torch.randn(8, 5, 2, 3, dtype=torch.float64),
        torch.randn(8, 5, 2, 3, dtype=torch.float64),
    )
    classifier = torch.randn(7, 5, dtype=torch.float64)
    return z, z_mirror, torch.tensor([0, 1, 2, 3, 4, 5, 6, 3]), features, features_mirror, classifier


@pytest.mark.parametrize("case", sorted(PARITY))
def test_parity_with_the_loss_nla_trained_with_before(case):
    settings, expected = PARITY[case]
    settings = dict(settings)
    epoch = settings.pop("epoch", 5)
    base = preset(settings.pop("preset", "official"))
    config = CriterionConfig(**{**base.to_dict(), "kernels": base.kernels, **settings})
    z, z_mirror, y, features, features_mirror, classifier = fixed_inputs()
    output = Criterion(config, COUNTS)(
        z,
        y,
        epoch,
        60,
        logits_mirror=z_mirror,
        features=features,
        features_mirror=features_mirror,
        classifier_weight=classifier,
    )
    assert output.total.item() == pytest.approx(expected, rel=1e-9)
    assert (output.weights is None) == (not config.naw)


def test_official_total_loss_is_the_authors_formula():
    torch.manual_seed(0)
    z, z_mirror, y = torch.randn(32, 7), torch.randn(32, 7), torch.randint(0, 7, (32,))
    output = Criterion()(z, y, 5, 60, logits_mirror=z_mirror)
    ce = F.cross_entropy(z, y, reduction="none")
    w = losses.naw_weight(z.softmax(1), y, losses.covariance_schedule(5, 60))
    expected = 0.5 * ce.mean() + 0.5 * (w * ce).mean() + 0.5 * losses.jsd_consistency(z, z_mirror, "sum")
    assert output.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.allclose(output.weights, w, rtol=1e-6) and output.schedule == pytest.approx(
        losses.covariance_schedule(5, 60)
    )
    # The paper preset averages the JSD over the batch instead: a factor of the batch size.
    paper = Criterion(preset("paper"))(z, y, 5, 60, logits_mirror=z_mirror)
    assert paper.consistency.item() == pytest.approx(
        losses.jsd_consistency(z, z_mirror, "mean", "view_to_mixture").item()
    )


def eq8_written_out(z, z_mirror, y, schedule, config):
    """Eq. 8 as the method's equations read (docs/method.md), with no piece of nla.losses: the reference the compact
    criterion's value and gradients are checked against."""
    p = z.softmax(1)
    p_gt = p.gather(1, y[:, None]).squeeze(1)
    p_nn = p.masked_fill(F.one_hot(y, p.shape[1]).bool(), float("-inf")).amax(1)
    q = torch.stack([p_gt, p_nn], 1)

    def density(mean, major_std, ratio, off_sign, scale):
        major, minor = major_std**2, (major_std / ratio) ** 2
        cov = torch.tensor(
            [[major + minor, off_sign * (major - minor)], [off_sign * (major - minor), major + minor]], dtype=q.dtype
        )
        d = q - torch.tensor(mean, dtype=q.dtype)
        mahalanobis = ((d @ torch.linalg.inv(cov)) * d).sum(1)
        return scale * torch.exp(-0.5 * mahalanobis) / (2 * math.pi * torch.linalg.det(cov) ** 0.5)

    k = config.kernels
    w_true = density(k.true_mean, k.true_major_std, k.true_axis_ratio, -schedule, k.true_scale)
    w_false = density(k.false_mean, k.false_major_std, k.false_axis_ratio, 1.0, 1.0)
    w = torch.where(p.argmax(1) == y, w_true, w_false)
    w = w.detach() if config.detach_weight else w
    classification = config.lam * ((1 + w) * F.cross_entropy(z, y, reduction="none")).mean()
    m = ((z + z_mirror) / 2).softmax(1)

    def kl(a, b):
        return (a * (a.log() - b.log())).sum(1)

    views = (p, z_mirror.softmax(1))
    if config.jsd_direction == "mixture_to_view":
        per_sample = 0.5 * sum(kl(m, view) for view in views)
    else:
        per_sample = 0.5 * sum(kl(view, m) for view in views)
    jsd = per_sample.sum() if config.consistency_reduction == "sum" else per_sample.mean()
    return classification + config.consistency_weight * jsd


@pytest.mark.parametrize("name", ["official", "paper", "from_scratch"])
@pytest.mark.parametrize("epoch", [0, 5, 59])
def test_value_and_gradients_are_eq8_written_out(name, epoch):
    """The criterion computes eq. 8 with few operations (one log-softmax reused, NAW in rotated coordinates): its
    value and its gradients for both views equal the equations written out, in float64."""
    config = preset(name)
    torch.manual_seed(epoch)
    z, z_mirror = torch.randn(32, 7, dtype=torch.float64) * 3, torch.randn(32, 7, dtype=torch.float64) * 3
    z.requires_grad_(True), z_mirror.requires_grad_(True)
    y = torch.randint(0, 7, (32,))
    y[:8] = z[:8].argmax(1)  # both branches of eq. 4 present
    criterion = Criterion(config)
    ours = criterion(z, y, epoch, 60, logits_mirror=z_mirror).total
    reference = eq8_written_out(z, z_mirror, y, criterion.schedule(epoch, 60), config)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-10)
    for got, expected in zip(torch.autograd.grad(ours, (z, z_mirror)), torch.autograd.grad(reference, (z, z_mirror))):
        assert torch.allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_the_preset_files_are_the_defaults_and_the_papers_text():
    assert preset("official") == CriterionConfig()  # the file lists nla's defaults in full
    assert preset("from_scratch") == CriterionConfig(detach_weight=True, consistency_reduction="mean")
    # The paper's false kernel: sigma_11 = s^2 (1 + 1/r^2) = 0.8 with r = 6.
    s = preset("paper").kernels.false_major_std
    assert s**2 * (1 + 1 / 36) == pytest.approx(0.8)


def test_warm_up_trains_without_naw_then_with_it():
    torch.manual_seed(1)
    z, y = torch.randn(16, 7), torch.randint(0, 7, (16,))
    criterion = Criterion(CriterionConfig(naw_warmup_epochs=2, consistency="none"))
    during, after = criterion(z, y, 1, 10), criterion(z, y, 2, 10)
    assert during.weights is None and during.total.item() == pytest.approx(0.5 * F.cross_entropy(z, y).item())
    assert after.weights is not None and after.total.item() > during.total.item()
    assert during.schedule == pytest.approx(losses.covariance_schedule(1, 10))  # the scheduler counts from epoch 0


def test_weight_gradient_norm_is_what_the_undetached_weight_adds():
    torch.manual_seed(2)
    z, y = torch.randn(16, 7, requires_grad=True), torch.randint(0, 7, (16,))
    attached, detached = (
        Criterion(CriterionConfig(consistency="none")),
        Criterion(CriterionConfig(consistency="none", detach_weight=True)),
    )
    out_attached, out_detached = attached(z, y, 3, 10), detached(z, y, 3, 10)
    (g_attached,) = torch.autograd.grad(out_attached.total, z, retain_graph=True)
    (g_detached,) = torch.autograd.grad(out_detached.total, z, retain_graph=True)
    norm = attached.weight_gradient_norm(z, out_attached, y)
    assert norm.item() == pytest.approx((g_attached - g_detached).norm().item(), rel=1e-5)
    assert detached.weight_gradient_norm(z, out_detached, y).item() == 0.0


def test_the_gradient_through_the_weight_pushes_a_contradicted_image_towards_its_wrong_class():
    """The from-scratch study's mechanism (docs/experiments.md): for images whose label the model contradicts, the
    part of the gradient that flows through w alone lowers w by making the prediction more confidently wrong;
    detaching w removes exactly that part."""
    # A model stuck on class 0 (the majority) sees images labelled 1..6: every one sits in the false branch.
    z = torch.tensor([[1.5, 0.2, 0.1, 0.0, -0.1, 0.3, 0.0]]).repeat(6, 1).requires_grad_(True)
    y = torch.arange(1, 7)
    attached = Criterion(CriterionConfig(consistency="none"))
    detached = Criterion(CriterionConfig(consistency="none", detach_weight=True))
    (g_attached,) = torch.autograd.grad(attached(z, y, 0, 8).total, z)
    (g_detached,) = torch.autograd.grad(detached(z, y, 0, 8).total, z)
    through_w = g_attached - g_detached

    def margin(logits):  # p_NN - p_GT: how confidently the prediction contradicts the label
        probs = logits.softmax(1)
        p_gt = probs.gather(1, y[:, None]).squeeze(1)
        return losses.nearest_negative(probs, y) - p_gt

    step = 0.5
    with torch.no_grad():
        assert (margin(z - step * through_w) > margin(z)).all()  # w's own gradient: more wrong
        assert (margin(z - step * g_detached) < margin(z)).all()  # the detached loss: towards the label
        assert (z - step * through_w).argmax(1).eq(0).all()


def test_config_checks_and_plain_dict_round_trip():
    config = CriterionConfig(loss="focal", kernels=losses.NAWKernels(false_major_std=0.9), schedule_epochs=40)
    again = CriterionConfig.coerce(config.to_dict())
    assert again == config and isinstance(again.kernels, losses.NAWKernels)
    for bad in (
        {"lam": -0.5},
        {"lam": math.nan},
        {"consistency_weight": math.inf},
        {"schedule_epochs": 0},
        {"label_smoothing": 1.0},
        {"naw_warmup_epochs": -1},
    ):
        with pytest.raises(ValueError, match="criterion"):
            CriterionConfig(**bad)


def test_losses_that_need_more_say_so():
    z, y = torch.randn(4, 7), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="needs every training class count > 0"):
        Criterion(CriterionConfig(loss="balanced_softmax"), [1, 0, 2, 3, 4, 5, 6])
    with pytest.raises(ValueError, match="needs the logits of the mirrored images"):
        Criterion()(z, y, 0, 10)
    with pytest.raises(ValueError, match="needs the feature maps"):
        Criterion(CriterionConfig(consistency="cam"))(z, y, 0, 10, logits_mirror=z)


def test_criterion_settings_a_library_user_gets_wrong_are_one_line():
    """loss='cee' was accepted until the first step; kernels given as lists (as YAML gives them) did not hash;
    balanced_softmax without class counts failed on a tensor size."""
    from nla.errors import ConfigError

    with pytest.raises(ConfigError, match="criterion loss='cee': expected one of ce, focal"):
        CriterionConfig(loss="cee")
    with pytest.raises(ConfigError, match="criterion consistency='JSD': expected one of none, jsd, l1, cam"):
        CriterionConfig(consistency="JSD")
    listed = CriterionConfig(kernels={"true_mean": [0.5, 0.5], "false_mean": [0.3, 0.15]}, consistency="none")
    assert listed.kernels == losses.NAWKernels() and hash(listed.kernels) == hash(losses.NAWKernels())
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    assert torch.isfinite(Criterion(listed)(logits, labels, 0, 5).total)
    with pytest.raises(ConfigError, match="loss 'balanced_softmax' needs the training class counts"):
        Criterion(CriterionConfig(loss="balanced_softmax", consistency="none"))(logits, labels, 0, 5)
