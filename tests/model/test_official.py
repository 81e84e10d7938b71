"""Our BS-Locoformer computes the same function as the authors' model (shared/fixtures)."""

import shutil

import pytest
import torch

from mixitcli.model import ModelLoadError, load_model, slice_outputs
from mixitcli.model.official import (
    OfficialCheckpointError,
    convert_state_dict,
    load_official,
    official_to_ours,
    ours_to_official,
    to_official_state_dict,
)
from tests.conftest import rel_err

TOL = 1e-4


@pytest.fixture(scope="module")
def tiny4(official_tiny):
    model = load_official(official_tiny / "tiny4_model.pth", official_tiny / "tiny4_merged_config.yaml")
    io = torch.load(official_tiny / "tiny4_io.pt", map_location="cpu", weights_only=True)
    return model, io


@pytest.fixture(scope="module")
def tiny12(official_tiny):
    model = load_official(official_tiny / "tiny12_model.pth", official_tiny / "tiny12_merged_config.yaml")
    io = torch.load(official_tiny / "tiny12_io.pt", map_location="cpu", weights_only=True)
    return model, io


def test_imported_config(tiny4, tiny12):
    for (model, _), n in ((tiny4, 4), (tiny12, 12)):
        cfg = model.config
        assert (cfg.n_outputs, cfg.n_blocks, cfg.d_model, cfg.n_heads, cfg.n_groups) == (n, 2, 16, 2, 2)
        assert cfg.ffn_hidden == (24, 24) and cfg.kernel_size == 8 and cfg.dropout == 0.1
        assert not model.training
    assert tiny4[0].stems == ("bass", "drums", "vocals", "other")


def test_every_stage_matches_official_4_outputs(tiny4):
    model, io = tiny4
    with torch.no_grad():
        spec, scale = model.analyse(io["mixture"])  # (1, 2, 1025, 174), (1, 2, 1, 1)
        assert rel_err(scale.view(1, 1, 2, 1), io["wrapper_scale"]) < TOL
        net_in = spec / scale
        assert rel_err(net_in.permute(0, 2, 1, 3), io["net_in"]) < TOL  # theirs: (b, f, c, l)
        x = model.encoder(net_in)  # (b, l, k, d); theirs: (b, d, l, k)
        assert rel_err(x.permute(0, 3, 1, 2), io["enc_out"]) < TOL
        for i, block in enumerate(model.separator):
            x = block(x)
            assert rel_err(x.permute(0, 3, 1, 2), io[f"block{i}_out"]) < TOL, f"block {i}"
        net_out = model.decoder(x) * net_in.unsqueeze(1)  # (b, n, c, f, l)
        assert rel_err(net_out, io["net_out"]) < TOL
        assert rel_err(model(io["mixture"]), io["wrapper_out"]) < TOL


def test_wrapper_output_matches_official_12_outputs(tiny12):
    model, io = tiny12
    with torch.no_grad():
        out = model(io["mixture"])
    assert out.shape == (1, 12, 2, io["mixture"].shape[-1])
    assert rel_err(out, io["wrapper_out"]) < TOL


def test_sliced_heads_equal_chosen_outputs_exactly(tiny12):
    model, io = tiny12
    keep = [7, 0, 11, 3]
    small = slice_outputs(model, keep)
    assert small.config.n_outputs == 4 and small.stems == ("bass", "drums", "vocals", "other")
    with torch.no_grad():
        full = model(io["mixture"])
        part = small(io["mixture"])
    assert torch.equal(part, full[:, keep])


@pytest.mark.parametrize("keep", [[12], [0, 0], []])
def test_slicing_rejects_bad_indices(tiny12, keep):
    with pytest.raises(ValueError, match="cannot keep outputs"):
        slice_outputs(tiny12[0], keep)


def test_name_mapping_runs_both_ways(official_tiny):
    raw = torch.load(official_tiny / "tiny12_model.pth", map_location="cpu", weights_only=True)
    for key in raw:
        if key.startswith("model.model."):
            name = key[len("model.model.") :]
            assert ours_to_official(official_to_ours(name)) == name
    # the pre-attention FFN is index 1 in their lists
    assert official_to_ours("blocks.3.frame_path.ffn.1.conv1d.weight") == "separator.3.time.ffn_pre.conv.weight"
    assert official_to_ours("blocks.0.freq_path.ffn_norm.0.gamma") == "separator.0.freq.norm_post.gamma"


def test_export_to_official_layout_round_trips(tiny4, official_tiny, tmp_path):
    model, io = tiny4
    exported = to_official_state_dict(model)
    original = torch.load(official_tiny / "tiny4_model.pth", map_location="cpu", weights_only=True)
    assert exported.keys() == original.keys()
    for key in original:
        assert torch.equal(exported[key], original[key]), key


def test_load_model_finds_official_folder_layout(official_tiny, tiny4, tmp_path):
    folder = tmp_path / "sup.musdb18hq.bslocoformer-tiny"
    (folder / "checkpoints").mkdir(parents=True)
    shutil.copy(official_tiny / "tiny4_model.pth", folder / "checkpoints" / "model.pth")
    shutil.copy(official_tiny / "tiny4_merged_config.yaml", folder / "merged_config.yaml")
    for path in (folder, folder / "checkpoints" / "model.pth"):
        model = load_model(path)
        with torch.no_grad():
            assert rel_err(model(tiny4[1]["mixture"]), tiny4[1]["wrapper_out"]) < TOL


def test_official_model_without_config_says_where_to_put_it(official_tiny, tmp_path):
    shutil.copy(official_tiny / "tiny4_model.pth", tmp_path / "model.pth")
    with pytest.raises(ModelLoadError, match="merged_config.yaml"):
        load_model(tmp_path / "model.pth")


def test_config_that_disagrees_with_tensors_is_rejected(official_tiny, tmp_path):
    text = (official_tiny / "tiny4_merged_config.yaml").read_text().replace("emb_dim: 16", "emb_dim: 32")
    (tmp_path / "merged_config.yaml").write_text(text)
    with pytest.raises(OfficialCheckpointError, match="d_model: config 32 vs tensors 16"):
        load_official(official_tiny / "tiny4_model.pth", tmp_path / "merged_config.yaml")


def test_unknown_key_is_rejected():
    with pytest.raises(OfficialCheckpointError, match="unexpected parameter"):
        convert_state_dict({"model.model.blocks.0.freq_path.rope.weight": torch.zeros(1)})


def test_unsupported_official_variant_is_rejected(official_tiny, tmp_path):
    text = (official_tiny / "tiny4_merged_config.yaml").read_text().replace("tf_order: ft", "tf_order: tf")
    (tmp_path / "merged_config.yaml").write_text(text)
    with pytest.raises(OfficialCheckpointError, match="tf_order=tf"):
        load_official(official_tiny / "tiny4_model.pth", tmp_path / "merged_config.yaml")
