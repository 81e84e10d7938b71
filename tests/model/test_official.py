"""Our BS-Locoformer computes the same function as the authors' model (tests/fixtures/official/)."""

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
from mixitcli.separate import separate_array
from tests import official as rule
from tests.builders import rel_err

TOL = 1e-4


@pytest.fixture(scope="module")
def tiny4(official):
    return load_official(official.weights("tiny4"), official.config("tiny4"))


@pytest.fixture(scope="module")
def tiny12(official):
    return load_official(official.weights("tiny12"), official.config("tiny12"))


def test_imported_config(tiny4, tiny12):
    for model, n in ((tiny4, 4), (tiny12, 12)):
        cfg = model.config
        assert (cfg.n_outputs, cfg.n_blocks, cfg.d_model, cfg.n_heads, cfg.n_groups) == (n, 2, 16, 2, 2)
        assert cfg.ffn_hidden == (24, 24) and cfg.kernel_size == 8 and cfg.dropout == 0.1
        assert not model.training
    assert tiny4.stems == ("bass", "drums", "vocals", "other")


def test_encoder_and_every_block_match_official_4_outputs(tiny4, official):
    io = official.io
    with torch.no_grad():
        spec, scale = tiny4.analyse(rule.mixture())  # (1, 2, 1025, 45), (1, 2, 1, 1)
        assert rel_err(scale.view(1, 1, 2, 1), io["tiny4_wrapper_scale"]) < TOL
        x = tiny4.encoder(spec / scale)  # (b, l, k, d); theirs: (b, d, l, k)
        assert rel_err(x.permute(0, 3, 1, 2), io["tiny4_enc_out"]) < TOL
        for i, block in enumerate(tiny4.separator):
            x = block(x)
            assert rel_err(x.permute(0, 3, 1, 2), io[f"tiny4_block{i}_out"]) < TOL, f"block {i}"
        out = tiny4(rule.mixture())
    assert out.shape == (1, 4, 2, 23284)
    assert rel_err(out, io["tiny4_wrapper_out"]) < TOL


def test_wrapper_output_matches_official_12_outputs(tiny12, official):
    with torch.no_grad():
        out = tiny12(rule.mixture())
    assert out.shape == (1, 12, 2, 23284)
    assert rel_err(out[..., ::4], official.io["tiny12_wrapper_out_stride4"]) < TOL


def test_chunked_inference_matches_official_12s_chunks_6s_hop(tiny4, official):
    out = separate_array(tiny4, rule.long_mixture()[0])  # 19 s: 12 s chunks, 6 s hop, equal weights
    assert out.shape == (4, 2, 838677)
    assert rel_err(out[..., ::61], official.io["tiny4_long_out_stride61"][0]) < TOL


def test_sliced_heads_equal_chosen_outputs_exactly(tiny12):
    keep = [7, 0, 11, 3]
    small = slice_outputs(tiny12, keep)
    assert small.config.n_outputs == 4 and small.stems == ("bass", "drums", "vocals", "other")
    with torch.no_grad():
        full = tiny12(rule.mixture())
        part = small(rule.mixture())
    assert torch.equal(part, full[:, keep])


@pytest.mark.parametrize("keep", [[12], [0, 0], []])
def test_slicing_rejects_bad_indices(tiny12, keep):
    with pytest.raises(ValueError, match="cannot keep outputs"):
        slice_outputs(tiny12, keep)


def test_name_mapping_runs_both_ways():
    for key in rule.official_state_dict("tiny12"):
        if key.startswith("model.model."):
            name = key[len("model.model.") :]
            assert ours_to_official(official_to_ours(name)) == name
    # the pre-attention FFN is index 1 in their lists
    assert official_to_ours("blocks.3.frame_path.ffn.1.conv1d.weight") == "separator.3.time.ffn_pre.conv.weight"
    assert official_to_ours("blocks.0.freq_path.ffn_norm.0.gamma") == "separator.0.freq.norm_post.gamma"


@pytest.mark.parametrize("name", ["tiny4", "tiny12"])
def test_export_to_official_layout_round_trips(name, tiny4, tiny12):
    model = tiny4 if name == "tiny4" else tiny12
    exported = to_official_state_dict(model)
    original = rule.official_state_dict(name)
    assert exported.keys() == original.keys()
    for key in original:
        assert torch.equal(exported[key], original[key]), key


def test_load_model_finds_official_folder_layout(official, tmp_path):
    folder = tmp_path / "sup.musdb18hq.bslocoformer-tiny"
    shutil.copytree(official.folder("tiny4"), folder)
    for path in (folder, folder / "checkpoints" / "model.pth"):
        model = load_model(path)
        with torch.no_grad():
            assert rel_err(model(rule.mixture()), official.io["tiny4_wrapper_out"]) < TOL


def test_official_model_without_config_says_where_to_put_it(official, tmp_path):
    shutil.copy(official.weights("tiny4"), tmp_path / "model.pth")
    with pytest.raises(ModelLoadError, match="merged_config.yaml"):
        load_model(tmp_path / "model.pth")


def test_config_that_disagrees_with_tensors_is_rejected(official, tmp_path):
    text = official.config("tiny4").read_text().replace("emb_dim: 16", "emb_dim: 32")
    (tmp_path / "merged_config.yaml").write_text(text)
    with pytest.raises(OfficialCheckpointError, match="d_model: config 32 vs tensors 16"):
        load_official(official.weights("tiny4"), tmp_path / "merged_config.yaml")


def test_unknown_key_is_rejected():
    with pytest.raises(OfficialCheckpointError, match="unexpected parameter"):
        convert_state_dict({"model.model.blocks.0.freq_path.rope.weight": torch.zeros(1)})


def test_unsupported_official_variant_is_rejected(official, tmp_path):
    text = official.config("tiny4").read_text().replace("tf_order: ft", "tf_order: tf")
    (tmp_path / "merged_config.yaml").write_text(text)
    with pytest.raises(OfficialCheckpointError, match="tf_order=tf"):
        load_official(official.weights("tiny4"), tmp_path / "merged_config.yaml")
