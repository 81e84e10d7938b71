"""Extra comparison with the large original fixtures (random weights, 2 s input, net_in/net_out).

Collected only when MIXIT_OFFICIAL_FIXTURES=DIR names a folder holding tiny4_model.pth,
tiny4_io.pt, tiny12_model.pth, tiny12_io.pt and tiny{4,12}_merged_config.yaml; the compact
fixtures in tests/fixtures/official/ (test_official.py) are the proof that runs everywhere.
"""

import os
from pathlib import Path

import torch

from mixitcli.model.official import load_official, to_official_state_dict
from mixitcli.separate import separate_array
from tests.builders import rel_err

TOL = 1e-4
DIR = Path(os.environ.get("MIXIT_OFFICIAL_FIXTURES", "."))


def load(name: str):
    model = load_official(DIR / f"{name}_model.pth", DIR / f"{name}_merged_config.yaml")
    return model, torch.load(DIR / f"{name}_io.pt", map_location="cpu", weights_only=True)


def test_every_stage_matches_official_4_outputs():
    model, io = load("tiny4")
    with torch.no_grad():
        spec, scale = model.analyse(io["mixture"])
        assert rel_err(scale.view(1, 1, 2, 1), io["wrapper_scale"]) < TOL
        net_in = spec / scale
        assert rel_err(net_in.permute(0, 2, 1, 3), io["net_in"]) < TOL  # theirs: (b, f, c, l)
        x = model.encoder(net_in)  # (b, l, k, d); theirs: (b, d, l, k)
        assert rel_err(x.permute(0, 3, 1, 2), io["enc_out"]) < TOL
        for i, block in enumerate(model.separator):
            x = block(x)
            assert rel_err(x.permute(0, 3, 1, 2), io[f"block{i}_out"]) < TOL, f"block {i}"
        net_out = model.decoder(x, net_in)  # masked spectra (b, n, c, f, l)
        assert rel_err(net_out, io["net_out"]) < TOL
        assert rel_err(model(io["mixture"]), io["wrapper_out"]) < TOL
        out = separate_array(model, io["long_mixture"][0])
    assert rel_err(out, io["long_out"][0]) < TOL


def test_12_outputs_and_export_round_trip():
    model, io = load("tiny12")
    with torch.no_grad():
        assert rel_err(model(io["mixture"]), io["wrapper_out"]) < TOL
    original = torch.load(DIR / "tiny12_model.pth", map_location="cpu", weights_only=True)
    exported = to_official_state_dict(model)
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[k], original[k]) for k in original)
