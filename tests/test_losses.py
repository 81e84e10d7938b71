"""Losses with constructed answers: known SNRs, known partitions, brute force."""

import itertools
import math

import pytest
import torch

from mixitcli.losses import finetune_loss, mixit_assignment, mixit_loss, mixit_loss_from_spectra, neg_snr


def test_neg_snr_of_known_snr():
    torch.manual_seed(0)
    ref = torch.randn(2, 3, 1000)
    noise = torch.randn(2, 3, 1000)
    noise = noise * (ref.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True)) * 10 ** (-10 / 20)
    loss = neg_snr(ref + noise, ref)  # 10 dB SNR: 10 log10(0.1 + 1e-3)
    assert loss.shape == (2, 3)
    assert torch.allclose(loss, torch.full((2, 3), 10 * math.log10(0.1 + 1e-3)), atol=1e-4)


def test_neg_snr_saturates_at_30_db():
    ref = torch.randn(4, 500)
    assert torch.allclose(neg_snr(ref, ref), torch.full((4,), -30.0), atol=1e-4)


def test_neg_snr_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(2, 10\) != reference shape \(2, 11\)"):
        neg_snr(torch.zeros(2, 10), torch.zeros(2, 11))


def official_finetune_loss(est, ref):
    """A loop transcription of docs/method.md §4's fine-tuning loss, for comparison."""
    tau, eps = 1e-3, 1e-8
    b, n, c, _ = est.shape
    mix = ref.sum(1)
    total = 0.0
    for i, j, k in itertools.product(range(b), range(n), range(c)):
        p_ref = float(ref[i, j, k].square().sum())
        p_mix = float(mix[i, k].square().sum())
        err = float((ref[i, j, k] - est[i, j, k]).square().sum())
        active = 10 * math.log10(p_ref / (p_mix + eps)) >= -60 if p_ref > 0 else False
        if active:
            total += 10 * math.log10(err + tau * p_ref + eps) - 10 * math.log10(p_ref + eps)
        else:
            total += 0.1 * 10 * math.log10(err + tau * p_mix + eps)
    return total / (b * n * c)


def test_finetune_loss_matches_the_definition_with_inactive_stems():
    torch.manual_seed(0)
    ref = torch.randn(2, 4, 2, 800, dtype=torch.float64)
    ref[0, 2] = 0  # dropped stem
    ref[1, 1] *= 1e-4  # -80 dB: inactive
    est = ref + 0.3 * torch.randn_like(ref)
    loss = finetune_loss(est, ref)
    assert loss.item() == pytest.approx(official_finetune_loss(est, ref), abs=1e-4)


def test_finetune_loss_is_finite_for_silence_and_has_gradients():
    ref = torch.zeros(1, 4, 2, 100)
    est = torch.zeros(1, 4, 2, 100, requires_grad=True)
    loss = finetune_loss(est, ref)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(est.grad).all()


def make_partition_problem(b=3, n=6, c=2, t=4000, seed=0):
    """Independent sources; mixture m sums the sources the partition assigns to it."""
    g = torch.Generator().manual_seed(seed)
    sources = torch.randn(b, n, c, t, generator=g) * torch.rand(b, n, 1, 1, generator=g).add(0.5)
    truth = torch.randint(0, 2, (b, n), generator=g)
    truth[:, 0], truth[:, 1] = 0, 1  # both mixtures non-empty
    onehot = torch.nn.functional.one_hot(truth, 2).float()
    mixtures = torch.einsum("bnm,bnct->bmct", onehot, sources)
    return sources, mixtures, truth


@pytest.mark.parametrize("solver", ["exact", "efficient"])
def test_mixit_recovers_a_known_partition(solver):
    sources, mixtures, truth = make_partition_problem()
    loss, assignment = mixit_loss(sources, mixtures, solver=solver)
    assert torch.equal(assignment, truth)
    assert loss.item() == pytest.approx(-30.0, abs=1e-3)  # perfect remix: the 30 dB threshold


def test_exact_solver_equals_brute_force():
    torch.manual_seed(3)
    est = torch.randn(4, 5, 2, 600)  # unrelated estimates: no clean answer
    mixtures = torch.randn(4, 2, 2, 600)
    loss, assignment = mixit_loss(est, mixtures, solver="exact")
    per_item = []
    for i in range(4):
        best, best_a = None, None
        for a in itertools.product(range(2), repeat=5):
            a = torch.tensor(a)
            remix = torch.stack([est[i, a == m].sum(0) for m in range(2)])
            value = neg_snr(remix, mixtures[i]).mean().item()
            if best is None or value < best:
                best, best_a = value, a
        per_item.append(best)
        assert torch.equal(assignment[i], best_a), i
    assert loss.item() == pytest.approx(sum(per_item) / 4, abs=1e-4)


def test_efficient_is_never_better_than_exact():
    torch.manual_seed(5)
    est = torch.randn(8, 6, 2, 500)
    mixtures = torch.randn(8, 2, 2, 500)
    exact, _ = mixit_loss(est, mixtures, solver="exact")
    efficient, _ = mixit_loss(est, mixtures, solver="efficient")
    assert exact.item() <= efficient.item() + 1e-6


@pytest.mark.parametrize("solver", ["exact", "efficient"])
def test_gradients_reach_every_output(solver):
    sources, mixtures, _ = make_partition_problem(b=2, n=5)
    est = (sources + 0.5 * torch.randn_like(sources)).requires_grad_()
    loss, _ = mixit_loss(est, mixtures, solver=solver)
    loss.backward()
    assert (est.grad.abs().sum(dim=(2, 3)) > 0).all()


@pytest.mark.parametrize("solver", ["exact", "efficient"])
def test_degenerate_inputs_give_finite_values(solver):
    zeros = torch.zeros(2, 4, 2, 300, requires_grad=True)
    loss, assignment = mixit_loss(zeros, torch.randn(2, 2, 2, 300), solver=solver)
    assert torch.isfinite(loss) and assignment.shape == (2, 4)
    loss.backward()
    assert torch.isfinite(zeros.grad).all()
    loss, _ = mixit_loss(torch.randn(2, 4, 2, 300), torch.zeros(2, 2, 2, 300), solver=solver)
    assert torch.isfinite(loss)


def test_mixit_rejects_bad_input():
    with pytest.raises(ValueError, match="disagree"):
        mixit_loss(torch.zeros(2, 4, 2, 100), torch.zeros(2, 2, 2, 90))
    with pytest.raises(ValueError, match="unknown MixIT solver"):
        mixit_loss(torch.zeros(1, 4, 2, 100), torch.zeros(1, 2, 2, 100), solver="greedy")
    with pytest.raises(ValueError, match=r"\(b, n, c, t\)"):
        mixit_loss(torch.zeros(4, 2, 100), torch.zeros(1, 2, 2, 100))


def istft(spectra: torch.Tensor, t: int) -> torch.Tensor:
    """A linear synthesis for the spectral MixIT tests: (b, k, c, f, l) -> (b, k, c, t)."""
    b, k, c, f, l = spectra.shape
    window = torch.hann_window(2 * (f - 1))
    wav = torch.istft(spectra.reshape(b * k * c, f, l), 2 * (f - 1), (f - 1) // 2, window=window, length=t)
    return wav.view(b, k, c, t)


@pytest.mark.parametrize("frames_outside", [False, True], ids=["bins-outside", "frames-outside"])
@pytest.mark.parametrize("solver", ["exact", "efficient"])
def test_mixit_from_spectra_equals_mixit_of_the_waveforms(solver, frames_outside):
    """Same loss, assignment and gradients as synthesising every output first; both layouts."""
    g = torch.Generator().manual_seed(7)
    b, n, c, f, l, t = 3, 6, 2, 65, 40, 39 * 32
    shape = (b, n, c, l, f) if frames_outside else (b, n, c, f, l)
    spectra = torch.randn(*shape, generator=g, dtype=torch.complex64)
    spectra = (spectra.transpose(-1, -2) if frames_outside else spectra).requires_grad_()
    truth = torch.randint(0, 2, (b, n), generator=g)
    truth[:, 0], truth[:, 1] = 0, 1
    onehot = torch.nn.functional.one_hot(truth, 2).float()
    with torch.no_grad():
        mixtures = torch.einsum("bnm,bnct->bmct", onehot, istft(spectra, t))
        mixtures += 0.3 * torch.randn(mixtures.shape, generator=g)
    results = []
    for fn in (
        lambda: mixit_loss(istft(spectra, t), mixtures, solver=solver),
        lambda: mixit_loss_from_spectra(spectra, mixtures, lambda s: istft(s, t), solver=solver),
    ):
        loss, assignment = fn()
        (grad,) = torch.autograd.grad(loss, spectra)
        results.append((loss.detach(), assignment, grad))
    (loss, assignment, grad), (ref_loss, ref_assignment, ref_grad) = results
    assert torch.equal(assignment, ref_assignment) and torch.equal(assignment, truth)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    assert torch.allclose(grad, ref_grad, rtol=1e-4, atol=1e-5 * ref_grad.abs().max().item())


def test_mixit_assignment_is_the_loss_assignment():
    sources, mixtures, truth = make_partition_problem(b=2, n=5)
    est = sources + 0.1 * torch.randn_like(sources)
    for solver in ("exact", "efficient"):
        assert torch.equal(mixit_assignment(est, mixtures, solver=solver), mixit_loss(est, mixtures, solver=solver)[1])
    assert torch.equal(mixit_assignment(est, mixtures), truth)


def test_mixit_from_spectra_rejects_waveforms():
    with pytest.raises(ValueError, match=r"complex spectra \(b, n, c, f, l\)"):
        mixit_loss_from_spectra(torch.zeros(1, 4, 2, 100), torch.zeros(1, 2, 2, 100), lambda s: s)
