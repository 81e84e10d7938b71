"""The decoder's last layer, its GLU and the masking of the mixture spectrum, as one operation.

Per band of w bins, each of the n outputs has a linear map of the band's hidden features to
4cw values, rows ordered (GLU half, re/im, channel, bin); the GLU gives a complex mask of c x w
bins, and the output's spectrum is that mask times the mixture's. Composed from autograd ops
this makes and copies several full-size tensors per band (the GLU result, its concatenation
over bands, the complex mask, the product and their gradients), most of them through
transposing copies. :class:`MaskedSpectrum` instead:

- reorders each band's rows to (GLU half, channel, bin, re/im) for the product, so the GLU
  result, computed in place, is a complex tensor as it stands (one weight-sized copy each way
  instead of activation-sized passes: a gain with 12 outputs or batches above 1, even for a
  medium 4-output model at batch 1);
- multiplies it by the mixture straight into one preallocated spectrum laid out as the iSTFT
  reads it (frames outside bins);
- in backward, takes the mask gradient with one product over the whole spectrum into a
  frame-major buffer, copies each band's part once into the layer's layout, runs the GLU
  gradient in place and the layer's three gradients as single matrix products.

It keeps the GLU result and the sigmoid (in place of the layer's output) for backward;
recomputing them instead made bench/decoder.py's tiny 12-output MixIT case 1.28x slower to
save 0.2 GB.

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


def _interleave(t: torch.Tensor, c: int, w: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows (half, r, c, w) -> (half, c, w, r) on axis 1 of an (n, 4cw, ...) tensor, as ``dtype``.

    With re/im last, the GLU's result is a complex tensor as it stands (no planes to merge).
    """
    n, rest = t.shape[0], t.shape[2:]
    out = torch.empty(n, 4 * c * w, *rest, dtype=dtype, device=t.device)
    moved = t.view(n, 2, 2, c, w, *rest).movedim(2, 4)  # (n, half, c, w, r, ...)
    out.view(moved.shape).copy_(moved)
    return out


def _deinterleave(t: torch.Tensor, c: int, w: int, dtype: torch.dtype) -> torch.Tensor:
    """The inverse of :func:`_interleave`: rows (half, c, w, r) -> (half, r, c, w)."""
    n, rest = t.shape[0], t.shape[2:]
    out = torch.empty(n, 4 * c * w, *rest, dtype=dtype, device=t.device)
    moved = t.view(n, 2, c, w, 2, *rest).movedim(4, 2)  # (n, half, r, c, w, ...)
    out.view(moved.shape).copy_(moved)
    return out


class MaskedSpectrum(torch.autograd.Function):
    """Masked spectra of n outputs from the hidden features of k bands (see the module docstring).

    ``apply(hidden, spec, n_channels, keep, weight_0, bias_0, weight_1, bias_1, ...)``:

    Args:
        hidden: (k, b*l, D) hidden features per band, rows ordered (b, l); their dtype is the
            dtype of the last layer and the GLU (bfloat16 under autocast, as the layer it replaces).
        spec: complex (b, c, f, l) mixture spectrum.
        n_channels: c.
        keep: save what backward needs; without, each band's activations are freed as it goes
            (a Function's ``needs_input_grad`` says True under ``no_grad`` too).
        weight_i, bias_i: (n, 4 c w_i, D) and (n, 4 c w_i), the last layer of band i.

    Returns:
        complex (b, n, c, f, l) of spec's dtype, a transposed view of a (b, n, c, l, f) tensor
        (frames outside bins, as the iSTFT reads them).
    """

    @staticmethod
    def forward(
        ctx, hidden: torch.Tensor, spec: torch.Tensor, n_channels: int, keep: bool, *params: torch.Tensor
    ) -> torch.Tensor:
        b, c, f, l = spec.shape
        n, dtype, real = params[0].shape[0], hidden.dtype, spec.real.dtype
        with torch.autocast(hidden.device.type, enabled=False):
            # (b, c, f, l) -> (b, c, l, f): one small copy, so the products below run along bins
            mix = spec.transpose(-1, -2).contiguous().unsqueeze(1)  # (b, 1, c, l, f)
            out = torch.empty(b, n, c, l, f, dtype=spec.dtype, device=spec.device)
            weights, acts, start = [], [], 0
            for h, weight, bias in zip(hidden.unbind(0), params[0::2], params[1::2]):
                w = weight.shape[1] // (4 * c)
                weight = _interleave(weight, c, w, dtype)  # rows (half, c, w, r)
                z = per_output_affine(h, weight, _interleave(bias, c, w, dtype))  # (n, b*l, 4cw)
                _glu_(z)  # z now holds the GLU (the mask) and the sigmoid, for backward
                mask = torch.view_as_complex(z[..., : 2 * c * w].to(real).view(n, b, l, c, w, 2))
                band = slice(start, start + w)
                torch.mul(mask.permute(1, 0, 3, 2, 4), mix[..., band], out=out[..., band])  # (b, n, c, l, w)
                if keep:
                    weights.append(weight)
                    acts.append(z)
                start += w
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
        need_params = ctx.needs_input_grad[4:]
        dtype, param_dtype = hidden.dtype, ctx.param_dtype
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_spec = torch.zeros_like(spec) if need_spec else None
        grads, start = [], 0
        with torch.autocast(hidden.device.type, enabled=False):
            # dL/dmask = grad conj(spec), in the layout the gradient came in (the iSTFT's choice)
            same = spec.unsqueeze(1) if grad.stride(-1) <= grad.stride(-2) else mix.transpose(-1, -2)
            conj = same.conj().resolve_conj()  # a small copy: a product with a lazy conjugate is 3x slower
            d_mask = torch.empty(b, l, n, c, f, dtype=spec.dtype, device=spec.device)  # rows by frame, as dz
            torch.mul(grad, conj, out=d_mask.permute(0, 2, 3, 4, 1))
            d_mask = torch.view_as_real(d_mask)  # (b, l, n, c, f, r)
            for i, (h, weight, z) in enumerate(zip(hidden.unbind(0), weights, acts)):
                w = weight.shape[1] // (4 * c)
                band = slice(start, start + w)
                start += w
                value, gate = z.transpose(0, 1).chunk(2, dim=-1)  # (b*l, n, 2cw): the mask and sigmoid
                if need_spec:
                    mask = torch.view_as_complex(value.to(spec.real.dtype).reshape(b, l, n, c, w, 2))
                    grad_spec[:, :, band] = (grad[:, :, :, band] * mask.permute(0, 2, 3, 4, 1).conj()).sum(1)
                if not (need_hidden or need_params[2 * i] or need_params[2 * i + 1]):
                    grads += [None, None]
                    continue
                # dz rows grouped by frame, (b*l, n, 4cw): each product below is one matrix product
                dz = torch.empty(b * l, n, 4 * c * w, dtype=dtype, device=hidden.device)
                d_value, d_gate = dz.chunk(2, dim=-1)
                d_value.view(b, l, n, c, w, 2).copy_(d_mask[..., band, :])
                torch.mul(d_value, value, out=d_gate)  # GLU: d gate = d mask * mask * (1 - sigmoid)
                d_gate.addcmul_(d_gate, gate, value=-1)
                d_value.mul_(gate)  # d value = d mask * sigmoid
                dz2 = dz.view(b * l, -1)  # (b*l, n*4cw)
                if need_hidden:
                    torch.mm(dz2, weight.view(-1, weight.shape[-1]), out=grad_hidden[i])  # sum over outputs
                grads += [
                    _deinterleave((dz2.T @ h).view_as(weight), c, w, param_dtype) if need_params[2 * i] else None,
                    _deinterleave(dz2.sum(0, dtype=param_dtype).view(n, -1), c, w, param_dtype)
                    if need_params[2 * i + 1]
                    else None,
                ]
        return grad_hidden, grad_spec, None, None, *grads


def masked_spectrum(hidden: torch.Tensor, spec: torch.Tensor, weights, biases, *, n_channels: int) -> torch.Tensor:
    """:class:`MaskedSpectrum` with the last layers given as two lists; see there."""
    params = [p for pair in zip(weights, biases) for p in pair]
    keep = torch.is_grad_enabled() and any(t.requires_grad for t in (hidden, spec, *params))
    return MaskedSpectrum.apply(hidden, spec, n_channels, keep, *params)


def equal_width_runs(widths) -> list[tuple[int, int]]:
    """(first band, band count) of each run of consecutive bands of one width: 7 runs for the 62
    bands of docs/method.md §3.3."""
    runs, start = [], 0
    for i in range(1, len(widths) + 1):
        if i == len(widths) or widths[i] != widths[start]:
            runs.append((start, i - start))
            start = i
    return runs


def stacked_last_layers(weights, biases) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per run of bands of one width (:func:`equal_width_runs`), their last layers stacked:
    weight (g, n, 4cw, D) and bias (g, n, 4cw)."""
    runs = equal_width_runs([w.shape[1] for w in weights])
    return [(torch.stack(weights[a : a + g]), torch.stack(biases[a : a + g])) for a, g in runs]


def masked_planes(
    hidden: torch.Tensor, re: torch.Tensor, im: torch.Tensor, layers, *, n_channels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`masked_spectrum` composed from standard operators on real planes, for exporters.

    The same function (values equal to float rounding), written without the autograd Function,
    in-place operators or complex tensors, none of which an ONNX graph holds: per run of bands
    of one width, one product for the last layers of all its bands, the GLU, then the complex
    product written out on the real and imaginary planes (7 runs instead of 62 bands: a graph
    a tenth the size).

    Args:
        hidden: (k, b*l, D) hidden features per band, rows ordered (b, l).
        re, im: (b, c, f, l) real and imaginary planes of the mixture spectrum.
        layers: :func:`stacked_last_layers` of the bands' last layers.
        n_channels: c.

    Returns:
        real and imaginary planes (b, n, c, f, l) of the outputs' spectra.
    """
    b, c, f, l = re.shape
    out_re, out_im, band, start = [], [], 0, 0
    for weight, bias in layers:  # (g, n, 4cw, D), (g, n, 4cw)
        g, w = weight.shape[0], weight.shape[2] // (4 * n_channels)
        y = torch.matmul(hidden[band : band + g].unsqueeze(1), weight.transpose(-1, -2)) + bias.unsqueeze(
            2
        )  # (g, n, b*l, 4cw)
        mask = torch.nn.functional.glu(y, dim=-1).reshape(g, -1, b, l, 2, c, w)  # (g, n, b, l, r, c, w)
        mask = mask.permute(4, 2, 1, 5, 0, 6, 3).reshape(2, b, -1, c, g * w, l)  # (r, b, n, c, g*w, l)
        bins = slice(start, start + g * w)
        x_re, x_im = re[:, None, :, bins], im[:, None, :, bins]  # (b, 1, c, g*w, l)
        out_re.append(mask[0] * x_re - mask[1] * x_im)
        out_im.append(mask[0] * x_im + mask[1] * x_re)
        band, start = band + g, start + g * w
    return torch.cat(out_re, dim=3), torch.cat(out_im, dim=3)
