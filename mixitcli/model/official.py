"""Import the authors' checkpoints (b-sigpro/mixit-mss) into our BS-Locoformer.

A published model folder holds ``checkpoints/model.pth`` (a flat state dict of the training
task: network keys prefixed ``model.model.`` plus three Hann-window buffers) and
``merged_config.yaml`` (hydra-style, with unresolved ``${...}`` references). docs/method.md §8.

The parameter-name mapping lives in ``_RULES`` and nowhere else; it runs both ways.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from mixitcli.model.bslocoformer import BSLocoformer
from mixitcli.model.config import BANDS, ModelConfig, default_stems
from mixitcli.model.serialize import first_nonfinite, nonfinite_message

PREFIX = "model.model."
WINDOW_KEYS = ("model.stft.0.window", "model.istft.window", "stft.0.window")


class OfficialCheckpointError(Exception):
    """The official checkpoint or its configuration is missing, malformed or inconsistent."""


# (official name, our name) templates. {i}: block, {b}: band, {p}: parameter name.
# In the official block lists the FFN applied before attention is index 1, the one after is 0.
_PATHS = (("freq_path", "freq"), ("frame_path", "time"))
_WITHIN_PATH = (
    ("ffn_norm.1.gamma", "norm_pre.gamma"),
    ("ffn.1.conv1d.{p}", "ffn_pre.conv.{p}"),
    ("ffn.1.deconv1d.{p}", "ffn_pre.deconv.{p}"),
    ("attn_norm.gamma", "norm_attn.gamma"),
    ("attn.qkv.weight", "attn.qkv.weight"),
    ("attn.aggregate_heads.0.weight", "attn.out.weight"),
    ("ffn_norm.0.gamma", "norm_post.gamma"),
    ("ffn.0.conv1d.{p}", "ffn_post.conv.{p}"),
    ("ffn.0.deconv1d.{p}", "ffn_post.deconv.{p}"),
)
_RULES: tuple[tuple[str, str], ...] = tuple(
    (f"blocks.{{i}}.{path}.{theirs}", f"separator.{{i}}.{ours_path}.{ours}")
    for path, ours_path in _PATHS
    for theirs, ours in _WITHIN_PATH
) + (
    ("band_split_module.band_split_module.{b}.0.{p}", "encoder.norms.{b}.{p}"),
    ("band_split_module.band_split_module.{b}.1.{p}", "encoder.projs.{b}.{p}"),
    ("band_split_module.bandwise_decoding_module.{b}.0.{p}", "decoder.heads.{b}.norm.{p}"),
    ("band_split_module.bandwise_decoding_module.{b}.1.{p}", "decoder.heads.{b}.fc1.{p}"),
    ("band_split_module.bandwise_decoding_module.{b}.2.{p}", "decoder.heads.{b}.fc2.{p}"),
    ("band_split_module.bandwise_decoding_module.{b}.4.{p}", "decoder.heads.{b}.fc3.{p}"),
)


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name, group in (("i", r"\d+"), ("b", r"\d+"), ("p", r"weight|bias")):
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{group})")
    return re.compile(pattern + "$")


_TO_OURS = [(_compile(theirs), ours) for theirs, ours in _RULES]
_TO_THEIRS = [(_compile(ours), theirs) for theirs, ours in _RULES]


def official_to_ours(name: str) -> str:
    """Our parameter name for an official one (without the ``model.model.`` prefix)."""
    for pattern, template in _TO_OURS:
        m = pattern.match(name)
        if m:
            return template.format(**m.groupdict())
    raise OfficialCheckpointError(f"unexpected parameter {PREFIX}{name} in the official checkpoint")


def ours_to_official(name: str) -> str:
    """The official parameter name (without prefix) for one of ours."""
    for pattern, template in _TO_THEIRS:
        m = pattern.match(name)
        if m:
            return template.format(**m.groupdict())
    raise KeyError(f"{name} has no counterpart in the official layout")


def _band_width(name: str) -> int:
    return BANDS[int(name.split(".")[2])]  # decoder.heads.{b}....


def _tensor_to_ours(name: str, tensor: torch.Tensor, n_channels: int) -> torch.Tensor:
    """Layout changes: 1x1 convolutions become Linear; the last decoder layer's rows
    (half, re/im, output, channel, bin) become one block per output (output, half, re/im, channel, bin)."""
    if ".fc" in name or ".projs." in name:
        tensor = tensor.squeeze(-1) if tensor.ndim == 3 else tensor
    if ".fc3." in name:
        cw = n_channels * _band_width(name)
        rows = tensor.view(2, 2, -1, cw, *tensor.shape[1:])  # (half, re/im, n, c*w, [in])
        tensor = rows.movedim(2, 0).reshape(rows.shape[2], 4 * cw, *tensor.shape[1:])  # (n, 4cw, [in])
    return tensor.contiguous()


def _tensor_to_official(name: str, tensor: torch.Tensor, n_channels: int) -> torch.Tensor:
    """Inverse of :func:`_tensor_to_ours`."""
    if ".fc3." in name:
        n, rows = tensor.shape[:2]
        blocks = tensor.view(n, 2, 2, rows // 4, *tensor.shape[2:]).movedim(0, 2)  # (half, re/im, n, c*w, [in])
        tensor = blocks.reshape(n * rows, *tensor.shape[2:])
    if (".fc" in name or ".projs." in name) and name.endswith("weight"):
        tensor = tensor.unsqueeze(-1)
    return tensor.contiguous()


def convert_state_dict(official: dict[str, torch.Tensor], *, n_channels: int = 2) -> dict[str, torch.Tensor]:
    """Official task state dict -> our model's state dict."""
    ours = {}
    for key, tensor in official.items():
        if key in WINDOW_KEYS:
            continue
        if not key.startswith(PREFIX):
            raise OfficialCheckpointError(f"unexpected key {key!r}: official network keys start with {PREFIX!r}")
        name = official_to_ours(key[len(PREFIX) :])
        ours[name] = _tensor_to_ours(name, tensor, n_channels)
    return ours


def to_official_state_dict(model: BSLocoformer) -> dict[str, torch.Tensor]:
    """Our model's weights in the official checkpoint layout (for exchange with their code)."""
    c = model.config.n_channels
    out = {PREFIX + ours_to_official(k): _tensor_to_official(k, v, c) for k, v in model.state_dict().items()}
    window = torch.hann_window(model.config.n_fft, periodic=True)
    for key in WINDOW_KEYS:
        out[key] = window.clone()
    return out


def _resolve(value, top: dict):
    """Resolve ``${key}`` references against top-level keys (enough for the model section)."""
    if isinstance(value, str):
        m = re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value.strip())
        if m:
            if m.group(1) not in top:
                raise OfficialCheckpointError(
                    f"merged_config.yaml refers to ${{{m.group(1)}}}, which it does not define"
                )
            return _resolve(top[m.group(1)], top)
        return value
    if isinstance(value, list):
        return [_resolve(v, top) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, top) for k, v in value.items()}
    return value


def config_from_yaml(path: str | Path) -> tuple[ModelConfig, dict]:
    """Read ``task.model`` (wrapper) and ``task.model.model`` (network) of a merged_config.yaml.

    Returns:
        (config, wrapper): our ModelConfig and the resolved wrapper settings (scaling, css_*).
    """
    import yaml

    path = Path(path)
    try:
        top = yaml.safe_load(path.read_text())
        wrapper = _resolve({k: v for k, v in top["task"]["model"].items() if k != "model"}, top)
        net = _resolve(top["task"]["model"]["model"], top)
    except FileNotFoundError as e:
        raise OfficialCheckpointError(f"{path}: no such file (an official model folder has merged_config.yaml)") from e
    except (KeyError, TypeError, yaml.YAMLError) as e:
        raise OfficialCheckpointError(f"{path}: not an official merged_config.yaml (no task.model.model): {e}") from e

    unsupported = []
    if net.get("norm_type", "rmsgroupnorm") != "rmsgroupnorm":
        unsupported.append(f"norm_type={net['norm_type']}")
    if net.get("tf_order", "ft") != "ft":
        unsupported.append(f"tf_order={net['tf_order']}")
    if list(net.get("ffn_type", [])) != ["swiglu_conv1d", "swiglu_conv1d"]:
        unsupported.append(f"ffn_type={net.get('ffn_type')}")
    if not wrapper.get("scaling", False):
        unsupported.append("scaling=false")
    if unsupported:
        raise OfficialCheckpointError(f"{path}: unsupported official settings: {', '.join(unsupported)}")
    config = ModelConfig(
        n_outputs=int(net["num_spk"]),
        n_channels=int(net["num_chan"]),
        sample_rate=int(wrapper.get("fs", 44100)),
        n_fft=int(wrapper["n_fft"]),
        hop_length=int(wrapper["hop_length"]),
        bands=BANDS,
        n_blocks=int(net["n_layers"]),
        d_model=int(net["emb_dim"]),
        attention_dim=int(net["attention_dim"]),
        n_heads=int(net["n_heads"]),
        n_groups=int(net["num_groups"]),
        ffn_hidden=tuple(int(h) for h in net["ffn_hidden_dim"]),
        kernel_size=int(net["conv1d_kernel"]),
        stride=int(net["conv1d_shift"]),
        eps=float(net["eps"]),
        dropout=float(net["dropout"]),
    )
    return config, wrapper


def _check_shapes(config: ModelConfig, sd: dict[str, torch.Tensor], source: Path) -> None:
    """Sizes implied by the tensors must match the YAML (docs/method.md §8)."""
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("separator.")}
    implied = {
        "n_blocks": len(blocks),
        "d_model": sd["encoder.projs.0.weight"].shape[0],
        "attention_dim": sd["separator.0.freq.attn.qkv.weight"].shape[0] // 3,
        "ffn_hidden": (
            sd["separator.0.freq.ffn_pre.deconv.weight"].shape[0],
            sd["separator.0.freq.ffn_post.deconv.weight"].shape[0],
        ),
        "kernel_size": sd["separator.0.freq.ffn_pre.conv.weight"].shape[-1],
        "n_outputs": sd["decoder.heads.0.fc3.weight"].shape[0],
    }
    wrong = [f"{k}: config {getattr(config, k)} vs tensors {v}" for k, v in implied.items() if getattr(config, k) != v]
    if wrong:
        raise OfficialCheckpointError(f"{source}: merged_config.yaml disagrees with model.pth ({'; '.join(wrong)})")


def find_official(path: str | Path) -> tuple[Path, Path] | None:
    """(model.pth, merged_config.yaml) for an official model folder or its model.pth; else None."""
    path = Path(path)
    if path.is_dir():
        candidates = [(path / "checkpoints" / "model.pth", path / "merged_config.yaml")]
    else:
        candidates = [(path, path.parent.parent / "merged_config.yaml"), (path, path.parent / "merged_config.yaml")]
    for weights, config in candidates:
        if weights.is_file() and config.is_file():
            return weights, config
    return None


def load_official(weights: str | Path, config: str | Path, *, map_location: str = "cpu") -> BSLocoformer:
    """Build our model from an official ``model.pth`` and ``merged_config.yaml``.

    Loading never executes code from the file (``weights_only=True``).

    Raises:
        OfficialCheckpointError: unreadable files, unknown keys, or sizes that disagree.
    """
    weights = Path(weights)
    model_config, _ = config_from_yaml(config)
    try:
        raw = torch.load(weights, map_location=map_location, weights_only=True)
    except FileNotFoundError as e:
        raise OfficialCheckpointError(f"{weights}: no such file") from e
    except Exception as e:  # pickle errors, truncated files
        raise OfficialCheckpointError(f"{weights}: not a readable PyTorch state dict ({e})") from e
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]  # a Lightning .ckpt of the same task
    bad = first_nonfinite(raw) if isinstance(raw, dict) else None
    if bad is not None:
        raise OfficialCheckpointError(f"{weights}: {nonfinite_message(*bad, fix='download the model again')}")
    sd = convert_state_dict(raw, n_channels=model_config.n_channels)
    _check_shapes(model_config, sd, weights)
    model = BSLocoformer(model_config, stems=default_stems(model_config.n_outputs))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise OfficialCheckpointError(f"{weights}: missing parameters {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()
