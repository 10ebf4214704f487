"""configs/i2v.yaml over configs/base.yaml: the base's network with frame conditioning, started from the base run."""

from __future__ import annotations

import pytest

from latentvid.diffusion.frame_masks import MASK_KINDS
from tests.test_recipes import resolved


@pytest.mark.slow
def test_i2v_fine_tunes_the_base_network_with_frame_conditioning():
    base, i2v = resolved("base.yaml")["model"]["init_args"], resolved("base.yaml", "i2v.yaml")["model"]["init_args"]
    assert i2v["init_from"] == "runs/base" and i2v["unet"]["init_args"]["frame_conditioning"] is True
    # otherwise the base's network, VAE and text tower: the base checkpoint's weights must fit
    same = lambda unet: {k: v for k, v in unet["init_args"].items() if k != "frame_conditioning"}  # noqa: E731
    assert same(i2v["unet"]) == same(base["unet"]) and i2v["unet"]["class_path"] == base["unet"]["class_path"]
    assert i2v["first_stage"] == base["first_stage"] and i2v["text_encoder"] == base["text_encoder"]
    assert sum(i2v["frame_masks"][k] for k in MASK_KINDS) == pytest.approx(1.0)
    # the base's data, in its own folder (a folder of other parameters would be used with a warning), every
    # clip free to let the shape leave the frame (extension)
    base_data, i2v_data = resolved("base.yaml")["data"], resolved("base.yaml", "i2v.yaml")["data"]
    assert i2v_data["init_args"]["leave_ratio"] == 1.0 and i2v_data["init_args"]["root"] != base_data["init_args"]["root"]
    rest = lambda d: {k: v for k, v in d["init_args"].items() if k not in ("root", "leave_ratio")}  # noqa: E731
    assert rest(i2v_data) == rest(base_data) and i2v_data["class_path"] == base_data["class_path"]
    assert i2v_data["init_args"]["root"] != "data/shapes-leave"  # made by the earlier recipe with leave_ratio 0.5
