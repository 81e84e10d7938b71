"""The decoder's last layer, its GLU and the masking of the mixture spectrum, as one operation.

Per band of w bins, each of the n outputs has a linear map of the band's hidden features to
4cw values, rows ordered (GLU half, re/im, channel, bin); the GLU gives a complex mask of c x w
bins, and the output's spectrum is that mask times the mixture's. Composed from autograd ops
this makes and copies several full-size tensors per band: the GLU result, its concatenation
over bands, the complex mask, the product and their gradients, most of them in layouts that
need a transposing copy. :class:`MaskedSpectrum` computes the GLU in place, writes each band's
mask straight into one preallocated complex spectrum laid out as the iSTFT reads it, and
multiplies that by the mixture in place. Its backward takes the mask gradient in one pass,
then per band copies it once into the layer's layout, runs the GLU gradient in place and the
layer's three gradients as single matrix products.

Shape letters as in :mod:`mixitcli.model.bslocoformer`; r is the real/imaginary axis (2).
"""

from __future__ import annotations

import torch


def per_output_affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """n affine maps of one input by one batched product: (N, in) -> (n, N, out).

    Each output's rows come from the same product whatever n is, which keeps
    :func:`mixitcli.model.slice_outputs` exact.

    Args:
        x: (N, in); weight: (n, out, in); bias: (n, out).
    """
    x = x.unsqueeze(0).expand(weight.shape[0], -1, -1)  # (n, N, in), no copy
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def _glu_(z: torch.Tensor) -> None:
    """In place: (..., 2h) [a | b] -> [a * sigmoid(b) | sigmoid(b)].

    Below float32 (autocast) both are computed in float32 and rounded once, as ``F.glu`` does.
    """
    if z.dtype.itemsize < 4:
        full = z.float()
        _glu_(full)
        z.copy_(full)
        return
    value, gate = z.chunk(2, dim=-1)
    gate.sigmoid_()
    value.mul_(gate)


class MaskedSpectrum(torch.autograd.Function):
    """Masked spectra of n outputs from the hidden features of k bands (see the module docstring).

    ``apply(hidden, spec, n_channels, weight_0, bias_0, weight_1, bias_1, ...)``:

    Args:
        hidden: (k, b*l, D) hidden features per band, rows ordered (b, l); their dtype is the
            dtype of the last layer and the GLU (bfloat16 under autocast, as the layer it replaces).
        spec: complex (b, c, f, l) mixture spectrum.
        n_channels: c.
        weight_i, bias_i: (n, 4 c w_i, D) and (n, 4 c w_i), the last layer of band i.

    Returns:
        complex (b, n, c, f, l) of spec's dtype, a transposed view of a (b, n, c, l, f) tensor
        (frames outside bins, as the iSTFT reads them).
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, spec: torch.Tensor, n_channels: int, *params: torch.Tensor) -> torch.Tensor:
        weights, biases = params[0::2], params[1::2]
        b, c, f, l = spec.shape
        n, dtype = weights[0].shape[0], hidden.dtype
        keep = any(ctx.needs_input_grad)
        with torch.autocast(hidden.device.type, enabled=False):
            # complex masks with rows grouped by frame, as z: each band's write stays local
            masks = torch.empty(b, l, n, c, f, dtype=spec.dtype, device=spec.device)
            weights = [w.to(dtype) for w in weights]
            acts, start = [], 0
            for h, weight, bias in zip(hidden.unbind(0), weights, biases):
                w = weight.shape[1] // (4 * c)
                z = per_output_affine(h, weight, bias.to(dtype))  # (n, b*l, 4cw), rows (half, r, c, w)
                _glu_(z)  # z now holds the GLU (the mask) and the sigmoid, for backward
                mask = z[..., : 2 * c * w].view(n, b, l, 2, c, w).permute(3, 1, 2, 0, 4, 5)  # (r, b, l, n, c, w)
                mask = mask.to(spec.real.dtype)  # float32 under autocast: there is no complex bfloat16
                torch.complex(mask[0], mask[1], out=masks[..., start : start + w])
                if keep:
                    acts.append(z)
                start += w
            # (b, c, f, l) -> (b, c, l, f): one small copy, so the product below runs along bins
            mix = spec.transpose(-1, -2).contiguous()
            out = torch.empty(b, n, c, l, f, dtype=spec.dtype, device=spec.device)
            torch.mul(masks.permute(0, 2, 3, 1, 4), mix.unsqueeze(1), out=out)  # (b, n, c, l, f)
            del masks
        if keep:
            ctx.save_for_backward(hidden, spec, mix, *weights, *acts)
            ctx.shape, ctx.param_dtype = (b, n, c, f, l), params[0].dtype
        return out.transpose(-1, -2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        b, n, c, f, l = ctx.shape
        hidden, spec, mix, *rest = ctx.saved_tensors
        k = len(rest) // 2
        weights, acts = rest[:k], rest[k:]
        need_hidden, need_spec = ctx.needs_input_grad[:2]
        need_params = ctx.needs_input_grad[3:]
        dtype = hidden.dtype
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_spec = torch.zeros_like(spec) if need_spec else None
        grads, start = [], 0
        with torch.autocast(hidden.device.type, enabled=False):
            # dL/dmask = grad conj(spec), in the layout the gradient came in (the iSTFT's choice)
            same = spec if grad.stride(-1) <= grad.stride(-2) else mix.transpose(-1, -2)
            conj = same.conj().resolve_conj()  # a small copy: a product with a lazy conjugate is 3x slower
            d_mask = torch.empty(b, l, n, c, f, dtype=spec.dtype, device=spec.device)  # rows by frame, as dz
            torch.mul(grad, conj.unsqueeze(1), out=d_mask.permute(0, 2, 3, 4, 1))
            d_mask = torch.view_as_real(d_mask)  # (b, l, n, c, f, r)
            for i, (h, weight, z) in enumerate(zip(hidden.unbind(0), weights, acts)):
                w = weight.shape[1] // (4 * c)
                band = slice(start, start + w)
                start += w
                value, gate = z.transpose(0, 1).chunk(2, dim=-1)  # (b*l, n, 2cw): the mask and sigmoid
                if need_spec:
                    mask = value.reshape(b, l, n, 2, c, w).permute(3, 0, 2, 4, 5, 1).to(spec.real.dtype)
                    mask = torch.complex(mask[0], mask[1])  # (b, n, c, w, l)
                    grad_spec[:, :, band] = (grad[:, :, :, band] * mask.conj()).sum(1)
                if not (need_hidden or need_params[2 * i] or need_params[2 * i + 1]):
                    grads += [None, None]
                    continue
                # dz rows grouped by frame, (b*l, n, 4cw): each product below is one matrix product
                dz = torch.empty(b * l, n, 4 * c * w, dtype=dtype, device=hidden.device)
                d_value, d_gate = dz.chunk(2, dim=-1)
                # (b, l, n, c, w, r) -> (b, l, n, r, c, w): real and imaginary parts apart
                d_value.view(b, l, n, 2, c, w).copy_(d_mask[..., band, :].permute(0, 1, 2, 5, 3, 4))
                torch.mul(d_value, value, out=d_gate)  # GLU: d gate = d mask * mask * (1 - sigmoid)
                d_gate.addcmul_(d_gate, gate, value=-1)
                d_value.mul_(gate)  # d value = d mask * sigmoid
                dz2 = dz.view(b * l, -1)  # (b*l, n*4cw)
                if need_hidden:
                    torch.mm(dz2, weight.view(-1, weight.shape[-1]), out=grad_hidden[i])  # sum over outputs
                grads += [
                    (dz2.T @ h).view_as(weight).to(ctx.param_dtype) if need_params[2 * i] else None,  # (n, 4cw, D)
                    dz2.sum(0, dtype=ctx.param_dtype).view(n, -1) if need_params[2 * i + 1] else None,
                ]
        return grad_hidden, grad_spec, None, *grads


def masked_spectrum(hidden: torch.Tensor, spec: torch.Tensor, weights, biases, *, n_channels: int) -> torch.Tensor:
    """:class:`MaskedSpectrum` with the last layers given as two lists; see there."""
    params = [p for pair in zip(weights, biases) for p in pair]
    return MaskedSpectrum.apply(hidden, spec, n_channels, *params)
