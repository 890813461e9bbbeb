"""The method's maths against values computed independently from the equations (scipy's bivariate normal, numpy)."""

import math

import pytest
import torch
import torch.nn.functional as F

from nla import losses
from tests.conftest import preset

OFFICIAL, PAPER = preset("official"), preset("paper")


def weight(probs, epoch, config=OFFICIAL, targets=None):
    """The NAW weight at ``epoch`` of 60 under a preset: the scheduler's value, then eq. 4."""
    schedule = losses.covariance_schedule(epoch, 60, config.schedule_slope)
    return losses.naw_weight(probs, LABEL if targets is None else targets, schedule, config.kernels)


# Reference values: scipy.stats.multivariate_normal.pdf at q with the covariances of docs/method.md.
TRUE_E0 = 0.18341874518335502  # q = (0.7, 0.2), mu = (0.5, 0.5), Sigma = [[0.8, 0], [0, 0.8]] (CS = 0)
TRUE_E30_OFFICIAL = 0.23491179650803515  # off-diagonal -0.48 * (1 - exp(-7.5))
TRUE_E30_PAPER = 0.234092431253094  # off-diagonal -0.48 * (1 - exp(-5))
FALSE_OFFICIAL = 0.19004616848693814  # q = (0.2, 0.5), mu = (0.3, 0.15), s = 0.91, r = 6
FALSE_PAPER = 0.18834831902972055  # Sigma = [[0.8, 0.756757], [0.756757, 0.8]]

PROBS_TRUE = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64)  # label 0, predicted 0
PROBS_FALSE = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)  # label 0, predicted 1
LABEL = torch.tensor([0])


def test_covariance_schedule_at_start_and_end():
    assert losses.covariance_schedule(0, 60, 15) == 0.0
    assert losses.covariance_schedule(59, 60, 15) == pytest.approx(1 - math.exp(-14.75))
    assert losses.covariance_schedule(30, 60, 10) == pytest.approx(0.9932620530009145)
    assert 1 - losses.covariance_schedule(59, 60, 15) < 1e-6


def test_kernel_covariances_match_the_method_table():
    (d, o), _ = losses.kernel_covariance(0.8, 2.0, -1)
    assert (d, o) == pytest.approx((0.80, -0.48))
    (d, o), _ = losses.kernel_covariance(0.91, 6.0, +1)
    assert (d, o) == pytest.approx((0.8281 + 0.0230028, 0.8281 - 0.0230028), abs=1e-6)
    (d, o), _ = losses.kernel_covariance(PAPER.kernels.false_major_std, PAPER.kernels.false_axis_ratio, +1)
    assert (d, o) == pytest.approx((0.80, 0.8 * 35 / 37))
    (d, o), _ = losses.kernel_covariance(0.8, 2.0, -1, coupling=0.0)
    assert o == 0.0 and d == pytest.approx(0.8)


@pytest.mark.parametrize(
    "probs, epoch, preset, expected",
    [
        (PROBS_TRUE, 0, "official", TRUE_E0),
        (PROBS_TRUE, 30, "official", TRUE_E30_OFFICIAL),
        (PROBS_TRUE, 30, "paper", TRUE_E30_PAPER),
        (PROBS_FALSE, 0, "official", FALSE_OFFICIAL),
        (PROBS_FALSE, 30, "official", FALSE_OFFICIAL),  # the false kernel has no scheduler
        (PROBS_FALSE, 0, "paper", FALSE_PAPER),
    ],
)
def test_naw_weight_matches_bivariate_normal(probs, epoch, preset, expected):
    assert weight(probs, epoch, {"official": OFFICIAL, "paper": PAPER}[preset]).item() == pytest.approx(
        expected, rel=1e-9
    )


def test_branch_selection_uses_the_prediction():
    probs = torch.cat([PROBS_TRUE, PROBS_FALSE])
    assert weight(probs, 0, targets=torch.tensor([0, 0])).tolist() == pytest.approx([TRUE_E0, FALSE_OFFICIAL])
    # The same point q scored by the other branch gives a different weight.
    swapped = weight(torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64), 0, targets=torch.tensor([1]))
    assert swapped.item() != pytest.approx(FALSE_OFFICIAL)


def test_nearest_negative_ignores_the_given_class():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    assert losses.nearest_negative(probs, torch.tensor([0, 2])).tolist() == pytest.approx([0.3, 0.2])


def test_kernel_constants_change_the_weight_and_bad_ones_fail():
    base = losses.naw_weight(PROBS_TRUE, LABEL, 0.0).item()
    assert losses.naw_weight(PROBS_TRUE, LABEL, 0.0, losses.NAWKernels(true_scale=2.0)).item() == pytest.approx(
        2 * base
    )
    centred = losses.NAWKernels(true_mean=(0.7, 0.2))
    assert losses.naw_weight(PROBS_TRUE, LABEL, 0.0, centred).item() == pytest.approx(1 / (2 * math.pi * 0.8))
    with pytest.raises(ValueError, match="false_axis_ratio=0.5 must be a finite number of at least 1"):
        losses.NAWKernels(false_axis_ratio=0.5)
    with pytest.raises(ValueError, match="true_major_std=nan must be a finite positive number"):
        losses.NAWKernels(true_major_std=float("nan"))


def test_weight_is_differentiable_and_gradients_flow_through_it_unless_detached():
    logits = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 3, 0, 1])
    schedule = losses.covariance_schedule(10, 60)
    torch.autograd.gradcheck(lambda z: losses.naw_weight(z.softmax(1), targets, schedule), (logits,))

    def grad(detach: bool) -> torch.Tensor:
        ce = F.cross_entropy(logits, targets, reduction="none")
        w = losses.naw_weight(logits.softmax(1), targets, schedule)
        (g,) = torch.autograd.grad(losses.weighted_loss(ce, w, 0.5, detach_weight=detach), logits)
        return g

    attached, detached = grad(False), grad(True)
    assert not torch.allclose(attached, detached)
    # With w detached, the gradient is exactly lam * d/dz mean((1 + w) CE) with w a constant.
    ce = F.cross_entropy(logits, targets, reduction="none")
    w = losses.naw_weight(logits.softmax(1), targets, schedule).detach()
    (expected,) = torch.autograd.grad(0.5 * ((1 + w) * ce).mean(), logits)
    assert torch.allclose(detached, expected)


def test_naw_ce_equals_plain_ce_when_the_weight_is_zero():
    logits, targets = torch.randn(8, 7), torch.randint(0, 7, (8,))
    ce = F.cross_entropy(logits, targets, reduction="none")
    assert losses.weighted_loss(ce, torch.zeros(8), lam=1.0) == pytest.approx(F.cross_entropy(logits, targets).item())
    assert losses.weighted_loss(ce, None, lam=0.5) == pytest.approx(0.5 * F.cross_entropy(logits, targets).item())


def test_jsd_against_hand_computed_values_and_reductions():
    z = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    z_mirror = torch.tensor([[math.log(3), 0.0], [math.log(3), 0.0]])  # p' = (0.75, 0.25)
    official = 0.03466823209753687  # 0.5 [KL(m||p) + KL(m||p')], m = softmax((z + z') / 2)
    paper = 0.03399503594422  # 0.5 [KL(p||m) + KL(p'||m)]
    assert losses.jsd_consistency(z, z_mirror, "sum").item() == pytest.approx(2 * official, rel=1e-6)
    assert losses.jsd_consistency(z, z_mirror, "mean").item() == pytest.approx(official, rel=1e-6)
    assert losses.jsd_consistency(z, z_mirror, "mean", "view_to_mixture").item() == pytest.approx(paper, rel=1e-6)
    assert losses.jsd_consistency(z, z, "sum").item() == pytest.approx(0.0, abs=1e-7)


def test_prediction_entropy_and_branch():
    uniform, sure = torch.full((1, 4), 0.25), torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert losses.prediction_entropy(torch.cat([uniform, sure])).tolist() == pytest.approx([math.log(4), 0.0], abs=1e-6)
    assert losses.prediction_true(torch.cat([PROBS_TRUE, PROBS_FALSE]), torch.tensor([0, 0])).tolist() == [True, False]


def test_baseline_losses_on_hand_computed_values():
    z = torch.tensor([[math.log(3), 0.0]])  # p = (0.75, 0.25)
    y = torch.tensor([0])
    assert losses.focal_loss(z, y, gamma=0.0).item() == pytest.approx(-math.log(0.75), rel=1e-6)
    assert losses.focal_loss(z, y, gamma=2.0).item() == pytest.approx(0.017980129528236306, rel=1e-5)
    assert losses.classification_loss(z, y, "label_smoothing", label_smoothing=0.1).item() == pytest.approx(
        0.34261268688518637, rel=1e-5
    )
    cb = losses.class_balanced_weights(torch.tensor([10, 100]), beta=0.9)
    assert cb.tolist() == pytest.approx([1.21113846, 0.78886154], rel=1e-6)
    bs = losses.balanced_softmax_loss(torch.zeros(1, 2), y, torch.tensor([1, 3]))
    assert bs.item() == pytest.approx(math.log(4), rel=1e-6)
    cb_loss = losses.classification_loss(
        z, y, "class_balanced", class_counts=torch.tensor([10, 100]), class_balanced_beta=0.9
    )
    assert cb_loss.item() == pytest.approx(1.21113846 * -math.log(0.75), rel=1e-5)
    with pytest.raises(ValueError, match="class counts"):
        losses.classification_loss(z, y, "balanced_softmax")


def test_l1_and_cam_consistency_on_hand_computed_values():
    z, z_mirror = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3), 0.0]])
    assert losses.l1_consistency(z, z_mirror, "sum").item() == pytest.approx(0.5)
    features = torch.tensor([[[[1.0, 2.0]]]])  # N=1, C=1, H=1, W=2
    features_mirror = torch.tensor([[[[3.0, 4.0]]]])
    weight = torch.tensor([[1.0], [2.0]])  # K=2 classes
    # CAMs (1, 2) and (2, 4); the mirror's (3, 4) and (6, 8), flipped back (4, 3) and (8, 6).
    assert losses.cam_consistency(features, features_mirror, weight).item() == pytest.approx((9 + 1 + 36 + 4) / 4)
    assert losses.cam_consistency(features, features.flip(-1), weight).item() == pytest.approx(0.0)


@pytest.mark.parametrize("schedule", [0.0, 0.63, torch.tensor(0.63, dtype=torch.float64)])
def test_naw_weight_is_the_two_gaussian_kernels_written_out(schedule):
    """naw_weight evaluates both kernels in rotated coordinates; gaussian_kernel is the density as eq. 4 writes it.
    Values and gradients agree, with the scheduler as a float or as the graph step's 0-d tensor."""
    torch.manual_seed(3)
    logits = (torch.randn(64, 7, dtype=torch.float64) * 2).requires_grad_(True)
    targets = torch.randint(0, 7, (64,))
    kernels = losses.NAWKernels(true_scale=1.5)
    probs = logits.softmax(1)
    p_gt, p_nn = probs.gather(1, targets[:, None]).squeeze(1), losses.nearest_negative(probs, targets)
    true_cov = losses.kernel_covariance(kernels.true_major_std, kernels.true_axis_ratio, -1, schedule)
    false_cov = losses.kernel_covariance(kernels.false_major_std, kernels.false_axis_ratio, +1)
    expected = torch.where(
        losses.prediction_true(probs, targets),
        kernels.true_scale * losses.gaussian_kernel(p_gt, p_nn, kernels.true_mean, true_cov),
        losses.gaussian_kernel(p_gt, p_nn, kernels.false_mean, false_cov),
    )
    got = losses.naw_weight(probs, targets, schedule, kernels)
    assert torch.allclose(got, expected, rtol=1e-12)
    (grad_got,) = torch.autograd.grad(got.sum(), logits, retain_graph=True)
    (grad_expected,) = torch.autograd.grad(expected.sum(), logits)
    assert torch.allclose(grad_got, grad_expected, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize(
    "setting",
    [
        {"false_axis_ratio": float("inf")},
        {"true_scale": float("nan")},
        {"true_scale": -3.0},
        {"true_major_std": float("inf")},
        {"true_mean": (0.5, float("nan"))},
    ],
)
def test_naw_kernels_that_cannot_work_are_refused_by_name(setting):
    """false_axis_ratio inf: a ZeroDivisionError at the first step; true_scale nan: a 'non-finite loss' that blamed
    the learning rate; true_scale -3: negative weights, silently."""
    from nla.errors import ConfigError
    from nla.losses import NAWKernels

    (name,) = setting
    with pytest.raises(ConfigError, match=rf"NAW kernel {name}="):
        NAWKernels(**setting)
