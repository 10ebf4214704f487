"""latentvid/callbacks/lora.py: SaveLoRA writes the denoiser's adapters where and when it says, and
refuses models without adapters and FSDP-sharded runs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from safetensors.torch import load_file

from latentvid.callbacks.lora import SaveLoRA
from latentvid.nn.video_transformers import WanTransformer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_writes_step_and_last_files(tiny_video, tmp_path):
    net = WanTransformer(str(tiny_video("wan")), lora_rank=2)
    module = SimpleNamespace(unet=net)
    cb = SaveLoRA(every_n_train_steps=2)
    trainer = SimpleNamespace(global_step=0, is_global_zero=True, log_dir=str(tmp_path / "v0"),
                              default_root_dir=str(tmp_path), strategy=object())
    cb.setup(trainer, module, "fit")
    for step in (1, 2, 3, 4):
        trainer.global_step = step
        cb.on_train_batch_end(trainer, module, None, None, step)
    cb.on_save_checkpoint(trainer, module, {})
    files = sorted(p.name for p in (tmp_path / "v0" / "lora").iterdir())
    assert files == ["last.safetensors", "step=2.safetensors", "step=4.safetensors"]
    state = load_file(str(tmp_path / "v0" / "lora" / "last.safetensors"))
    assert state.keys() == {f"transformer.{k}" for k in net.lora_state_dict()}
    trainer.is_global_zero = False  # other ranks write nothing
    cb.dirpath = str(tmp_path / "other")
    cb.on_train_end(trainer, module)
    assert not (tmp_path / "other").exists()


def test_refuses_without_adapters_and_under_fsdp(tiny_video):
    from lightning.pytorch.strategies import FSDPStrategy

    with pytest.raises(ValueError, match="needs a denoiser with LoRA adapters"):
        SaveLoRA().setup(SimpleNamespace(strategy=object()), SimpleNamespace(unet=WanTransformer(str(tiny_video("wan")))),
                         "fit")
    with pytest.raises(ValueError, match="FSDP-sharded adapters"):
        SaveLoRA().setup(SimpleNamespace(strategy=FSDPStrategy()),
                         SimpleNamespace(unet=WanTransformer(str(tiny_video("wan")), lora_rank=2)), "fit")
    with pytest.raises(ValueError, match="every_n_train_steps must be >= 1"):
        SaveLoRA(every_n_train_steps=0)
