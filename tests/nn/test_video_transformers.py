"""latentvid/nn/video_transformers.py against diffusers on tiny random pipeline folders
(tests/tiny_video_folders.py): predictions, one scheduler step, whole sampled videos, LoRA files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from latentvid.conditioning.t5 import T5TextEncoder
from latentvid.diffusion import RectifiedFlowSchedule, prediction_to_x0, run_sampler
from latentvid.models.latent_diffusion import LatentDiffusion
from latentvid.diffusion.discrete import DiscreteSchedule
from latentvid.nn.diffusers_vae import DiffusersCogVideoXVAE, DiffusersLTXVideoVAE, DiffusersWanVAE
from latentvid.nn.video_transformers import (
    CogVideoXTransformer,
    LTXVideoTransformer,
    pack_latents,
    unpack_latents,
    WanTransformer,
    flow_match_logsnrs,
    flow_sigma,
    flow_timestep,
    fsdp_wrap_policy,
    logsnr_from_flow_sigma,
)

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a red circle moving left"


def wan_inputs(seed: int = 0, b: int = 2, length: int = 7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, 3, 4, 4, generator=g)  # (B, C, t, h, w): 3 latent frames, 2 x 2 patches
    context = torch.randn(b, length, 16, generator=g)
    sigma = torch.tensor([0.3, 0.9][:b], dtype=torch.float64)
    return x, context, sigma


# ---- Wan ------------------------------------------------------------------------------------------
def test_flow_timestep_is_1000_sigma():
    sigma = torch.tensor([1e-3, 0.25, 0.5, 0.999], dtype=torch.float64)
    torch.testing.assert_close(flow_timestep(logsnr_from_flow_sigma(sigma)), 1000 * sigma, rtol=0, atol=1e-9)
    assert flow_timestep(torch.tensor([float("-inf"), float("inf")])).tolist() == [1000.0, 0.0]


def test_wan_prediction_equals_diffusers_transformer(tiny_video):
    from diffusers import WanTransformer3DModel

    folder = tiny_video("wan")
    ours = WanTransformer(str(folder)).eval()
    ref = WanTransformer3DModel.from_pretrained(str(folder / "transformer")).eval()
    x, context, sigma = wan_inputs()
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 4:] = False
    with torch.no_grad():
        got = ours(x, logsnr_from_flow_sigma(sigma), context, mask)
        # Wan's padding convention: WanPipeline zeroes the padded tokens and the model attends to all
        want = ref(x, timestep=(1000 * sigma).float(), encoder_hidden_states=context * mask[..., None],
                   return_dict=False)[0]
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert (got[0] - ours(x, logsnr_from_flow_sigma(sigma), context, None)[0]).abs().max() > 1e-4  # mask matters


def test_wan_grid_and_step_equal_flow_match_euler(tiny_video):
    from diffusers import FlowMatchEulerDiscreteScheduler

    folder = tiny_video("wan")
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(folder / "scheduler"))
    scheduler.set_timesteps(5)
    grid = flow_match_logsnrs(5, shift=scheduler.config.shift)
    torch.testing.assert_close(torch.sigmoid(-0.5 * grid.double()).float(), scheduler.sigmas, rtol=0, atol=1e-6)

    net = WanTransformer(str(folder)).eval()
    schedule = RectifiedFlowSchedule(shift=scheduler.config.shift)
    x, context, _ = wan_inputs(b=1)
    for i in (0, 2):  # the first step starts at sigma = 1 (logSNR = -inf)
        def denoise(z, logsnr):
            a, s = schedule.alpha_sigma(logsnr)
            return prediction_to_x0(net(z, logsnr, context), z, a, s, "flow")

        ours = run_sampler("ddim", denoise, x, grid[i:i + 2], alpha_sigma=schedule.alpha_sigma)
        with torch.no_grad():
            t = scheduler.timesteps[i]
            v = net.transformer(x, timestep=t.expand(1), encoder_hidden_states=context, return_dict=False)[0]
        scheduler._step_index = i
        want = scheduler.step(v, t, x, return_dict=False)[0]
        torch.testing.assert_close(ours, want, rtol=0, atol=1e-5)


def wan_model(folder: Path, lr: float = 1e-4, **unet) -> LatentDiffusion:
    return LatentDiffusion(
        unet=WanTransformer(str(folder), **unet),
        text_encoder=T5TextEncoder(str(folder), max_length=512, clean=True),
        first_stage=DiffusersWanVAE(str(folder)),
        schedule=RectifiedFlowSchedule(shift=3.0),
        target="flow", guidance_scale=5.0, sample_steps=4, lr=lr, warmup_steps=0).eval()


@pytest.mark.parametrize("kind, guidance", [("wan", 1.0), ("wan", 5.0), ("wan22-5b", 5.0)])
def test_wan_sampled_video_equals_wan_pipeline(tiny_video, kind, guidance):
    """Wan 2.1, and Wan 2.2 TI2V-5B's layout (patched residual VAE, per-token timesteps in the pipeline)."""
    from diffusers import WanPipeline

    folder = tiny_video(kind)
    model = wan_model(folder)
    pipe = WanPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    frames, size = (9, 16) if kind == "wan" else (5, 32)  # both 3 x 4 x 4 latents
    kwargs = dict(height=size, width=size, num_frames=frames, num_inference_steps=4, guidance_scale=guidance)
    want_latents = pipe(PROMPT, latents=latents.clone(), output_type="latent", **kwargs).frames
    want_video = pipe(PROMPT, latents=latents.clone(), output_type="pt", **kwargs).frames  # (B, T, 3, H, W) in [0, 1]

    denoise = model.guided_denoiser([PROMPT], fps=16.0, guidance_scale=guidance)
    z = run_sampler("ddim", denoise, latents, flow_match_logsnrs(4, shift=3.0), alpha_sigma=model.schedule.alpha_sigma)
    torch.testing.assert_close(z, want_latents, rtol=0, atol=1e-4)
    video = model.first_stage.decode(z).clamp(-1, 1)  # (B, 3, T, H, W)
    torch.testing.assert_close((video.transpose(1, 2) + 1) / 2, want_video, rtol=0, atol=1e-4)
    assert want_latents.abs().max() > 0.1  # not a degenerate comparison


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_wan22_ti2v_image_to_video_equals_wan_image_to_video_pipeline(tiny_video, guidance):
    """Wan 2.2 TI2V-5B's image-to-video (expand_timesteps: the image's latent frame clean, at timestep 0)."""
    from diffusers import WanImageToVideoPipeline

    folder = tiny_video("wan22-5b")
    model = wan_model(folder, frame_conditioning=True)
    pipe = WanImageToVideoPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.expand_timesteps
    g = torch.Generator().manual_seed(4)
    image = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    latents = torch.randn(1, 4, 3, 4, 4, generator=g)  # 5 frames of 32 x 32
    kwargs = dict(height=32, width=32, num_frames=5, num_inference_steps=4, guidance_scale=guidance)
    want = pipe(image=(image[0] + 1) / 2, prompt=PROMPT, latents=latents.clone(), output_type="latent",
                **kwargs).frames

    with torch.no_grad():
        first = model.first_stage.encode(image[:, :, None])  # (1, 4, 1, 4, 4)
    known = torch.cat([first, torch.zeros(1, 4, 2, 4, 4)], 2)
    denoise = model.frames_denoiser([PROMPT], 16.0, guidance, known, torch.tensor([[True, False, False]]),
                                    method="trained")
    z = run_sampler("ddim", denoise, latents, flow_match_logsnrs(4, shift=3.0), alpha_sigma=model.schedule.alpha_sigma)
    torch.testing.assert_close(z, want, rtol=0, atol=1e-4)
    assert (want - latents).abs()[:, :, 1:].max() > 0.1
    with pytest.raises(ValueError, match="frame_conditioning needs one transformer"):
        WanTransformer(str(tiny_video("wan22")), transformer_2_subfolder="transformer_2",
                       frame_conditioning=True)


def test_wan_sample_runs_every_sampler(tiny_video):
    model = wan_model(tiny_video("wan"))
    for sampler in ("ddim", "ancestral", "dpmpp_2m", "heun"):
        video = model.sample([PROMPT], num_frames=5, height=16, width=16, steps=3, sampler=sampler,
                             generator=torch.Generator().manual_seed(0))
        assert video.shape == (1, 3, 5, 16, 16) and torch.isfinite(video).all(), sampler


# ---- LoRA (every model) -----------------------------------------------------------------------------
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def build_model(kind: str, folder: Path, lr: float = 1e-4, **unet) -> LatentDiffusion:
    if kind == "wan":
        return wan_model(folder, lr=lr, **unet)
    if kind.startswith("cogvideox"):
        return cogvideox_model(folder, lr=lr, **unet)
    if kind == "ltx":
        return ltx_model(folder, lr=lr, **unet)
    raise KeyError(kind)


def reference_prediction(kind: str, net, transformer, x, logsnr, context):
    """The diffusers ``transformer`` called the way its pipeline calls it, for our inputs; (B, C, T, H, W)."""
    if kind == "wan":
        return transformer(x, timestep=(1000 * flow_sigma(logsnr)).float(), encoder_hidden_states=context,
                           return_dict=False)[0]
    if kind == "ltx":  # LTXPipeline at its default 25 fps
        t, h, w = x.shape[2:]
        out = transformer(pack_latents(x), context, (1000 * flow_sigma(logsnr)).float(),
                          torch.ones(context.shape[:2], dtype=torch.bool), num_frames=t, height=h, width=w,
                          rope_interpolation_scale=(4 / 25.0, 4, 4), return_dict=False)[0]
        return unpack_latents(out, t, h, w)
    rope = net.rotary_embedding(x.shape[2], x.shape[3], x.shape[4], x.device)
    ts = net.schedule.timestep(logsnr).round().long()  # integer timesteps, as CogVideoXPipeline passes
    return transformer(x.transpose(1, 2), context, ts, image_rotary_emb=rope, return_dict=False)[0].transpose(1, 2)


def model_inputs(kind: str, net, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 8 if kind == "ltx" else 4, 3, 4, 4, generator=g)
    context = torch.randn(2, 7 if kind == "wan" else 16, 16, generator=g)
    if kind in ("wan", "ltx"):
        return x, logsnr_from_flow_sigma(torch.tensor([0.3, 0.9], dtype=torch.float64)), context
    return x, net.schedule.logsnrs_at(torch.tensor([200, 700])), context


LORA_KINDS = ["wan", "cogvideox", "ltx"]


@pytest.fixture(scope="module", params=LORA_KINDS)
def lora_run(request, tiny_video, tmp_path_factory):
    """A rank-4 (alpha 8) LoRA model after two training steps through LatentDiffusion, and its saved file."""
    kind = request.param
    folder = tiny_video(kind)
    model = build_model(kind, folder, lr=1e-2, lora_rank=4, lora_alpha=8.0, lora_target_modules=LORA_TARGETS)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = model.configure_optimizers()["optimizer"]
    g = torch.Generator().manual_seed(0)
    batch = {"video": torch.rand(2, 3, 9, 16, 16, generator=g) * 2 - 1, "caption": [PROMPT, "a blue square"],
             "fps": torch.full((2,), 8.0), "frame_mask": torch.ones(2, 9, dtype=torch.bool)}
    model.train()
    for _ in range(2):  # two steps: lora_B leaves zero in the first, then lora_A gets gradients too
        opt.zero_grad()
        model.diffusion_loss(batch, generator=g).backward()
        opt.step()
    model.eval()
    file = model.unet.save_lora(tmp_path_factory.mktemp("lora") / f"{kind}_lora.safetensors")
    return kind, folder, model, before, file


def test_lora_step_changes_only_lora_weights(lora_run):
    _, _, model, before, _ = lora_run
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".lora_" in k for k in changed), sorted(changed)[:5]
    assert any("lora_A" in k for k in changed) and any("lora_B" in k for k in changed)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)


PIPELINES = {"wan": "WanPipeline", "cogvideox": "CogVideoXPipeline", "ltx": "LTXPipeline"}


def test_lora_file_loads_into_the_pipeline_and_back(lora_run):
    import diffusers
    from safetensors import safe_open

    kind, folder, model, _, file = lora_run
    with safe_open(str(file), "pt") as f:
        keys = list(f.keys())
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert all(k.startswith("transformer.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    assert meta["transformer.r"] == 4 and meta["transformer.lora_alpha"] == 8.0
    trained = {n for n, p in model.unet.transformer.named_parameters() if p.requires_grad}
    assert len(keys) == len(trained)  # the adapters and nothing else of the model

    pipe = getattr(diffusers, PIPELINES[kind]).from_pretrained(str(folder))
    pipe.load_lora_weights(str(file.parent), weight_name=file.name)
    cls = type(model.unet)
    x, logsnr, context = model_inputs(kind, model.unet)
    fps = torch.full((2,), 25.0)
    with torch.no_grad():
        ours = model.unet(x, logsnr, context, fps=fps)
        theirs = reference_prediction(kind, model.unet, pipe.transformer, x, logsnr, context)
        base = cls(str(folder))(x, logsnr, context, fps=fps)
        reloaded = cls(str(folder), lora_weights=str(file))(x, logsnr, context, fps=fps)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    torch.testing.assert_close(reloaded, ours, rtol=0, atol=1e-5)
    assert (ours - base).abs().max() > 1e-4  # the trained adapters do change the prediction


def test_lora_checkpoint_leaves_base_out_and_reloads(lora_run):
    kind, folder, model, _, _ = lora_run
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": {}}
    model.on_save_checkpoint(checkpoint)
    saved = set(checkpoint["state_dict"])
    assert saved and all(".lora_" in k for k in saved), sorted(saved)[:5]
    fresh = build_model(kind, folder, lora_rank=4, lora_alpha=8.0, lora_target_modules=LORA_TARGETS)
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])
    for k, v in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v, rtol=0, atol=0)


def test_full_finetune_trains_everything(tiny_video):
    net = WanTransformer(str(tiny_video("wan")), gradient_checkpointing=True).train()
    assert all(p.requires_grad for p in net.parameters()) and net.frozen_state_keys() == []
    assert net.transformer.gradient_checkpointing
    x, context, sigma = wan_inputs()
    net(x.requires_grad_(), logsnr_from_flow_sigma(sigma), context).square().mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_fsdp_policy_wraps_each_block(tiny_video):
    net = WanTransformer(str(tiny_video("wan")))
    wrapped = [name for name, m in net.named_modules() if fsdp_wrap_policy(m, recurse=False, nonwrapped_numel=0)]
    assert wrapped == ["transformer.blocks.0", "transformer.blocks.1"]
    assert all(isinstance(b, net.block_class) for b in net.transformer.blocks)
    assert fsdp_wrap_policy(net, recurse=True, nonwrapped_numel=0)


# ---- bad input ----------------------------------------------------------------------------------
def test_errors_name_the_path_and_key(tiny_video, tmp_path):
    folder = tiny_video("wan")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere" / "transformer")):
        WanTransformer(str(tmp_path / "nowhere"))
    wrong = tmp_path / "wrong"
    shutil.copytree(folder / "transformer", wrong / "transformer")
    cfg = json.loads((wrong / "transformer" / "config.json").read_text())
    (wrong / "transformer" / "config.json").write_text(json.dumps({**cfg, "_class_name": "CogVideoXTransformer3DModel"}))
    with pytest.raises(ValueError, match=r"config\.json: _class_name is 'CogVideoXTransformer3DModel', expected "
                                         r"'WanTransformer3DModel'"):
        WanTransformer(str(wrong))
    with pytest.raises(ValueError, match=r"lora_target_modules \['to_qq'\]"):
        WanTransformer(str(folder), lora_rank=2, lora_target_modules=["to_qq"])
    with pytest.raises(FileNotFoundError, match="lora_weights: no LoRA file"):
        WanTransformer(str(folder), lora_weights=str(tmp_path / "none.safetensors"))
    net = WanTransformer(str(folder))
    x, context, sigma = wan_inputs()
    with pytest.raises(ValueError, match="multiples of the patch size 2"):
        net(x[..., :3], logsnr_from_flow_sigma(sigma), context)
    with pytest.raises(ValueError, match="padded frames"):
        net(x, logsnr_from_flow_sigma(sigma), context, frame_mask=torch.tensor([[1, 1, 0], [1, 1, 1]]).bool())
    vae = DiffusersWanVAE(str(folder))
    with pytest.raises(ValueError, match="num_frames=8 does not fit .* 1 \\+ k \\* 4"):
        vae.encode(torch.zeros(1, 3, 8, 16, 16))


# ---- CogVideoX ------------------------------------------------------------------------------------
def cogvideox_model(folder: Path, lr: float = 1e-4, **unet) -> LatentDiffusion:
    return LatentDiffusion(
        unet=CogVideoXTransformer(str(folder), **unet),
        text_encoder=T5TextEncoder(str(folder), max_length=16, use_attention_mask=False, mask_padding=False),
        first_stage=DiffusersCogVideoXVAE(str(folder)),
        schedule=DiscreteSchedule(pretrained=str(folder)),
        target=None, guidance_scale=6.0, sample_steps=4, lr=lr, warmup_steps=0).eval()


@pytest.mark.parametrize("kind", ["cogvideox", "cogvideox-rope"])
def test_cogvideox_prediction_equals_diffusers_transformer(tiny_video, kind):
    from diffusers import CogVideoXTransformer3DModel

    folder = tiny_video(kind)
    ours = CogVideoXTransformer(str(folder)).eval()
    ref = CogVideoXTransformer3DModel.from_pretrained(str(folder / "transformer")).eval()
    x, _, context = model_inputs(kind, ours)
    ts = torch.tensor([999, 321])  # zero SNR and an inner timestep
    rope = ours.rotary_embedding(3, 4, 4, x.device)
    assert (rope is not None) == (kind == "cogvideox-rope")
    with torch.no_grad():
        got = ours(x, ours.schedule.logsnrs_at(ts), context)
        want = ref(x.transpose(1, 2), context, ts, image_rotary_emb=rope, return_dict=False)[0].transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.timestep(ours.schedule.logsnrs_at(ts)), ts.double(), rtol=0, atol=1e-6)


def test_cogvideox_step_equals_cogvideox_ddim_scheduler(tiny_video):
    from diffusers import CogVideoXDDIMScheduler

    folder = tiny_video("cogvideox")
    scheduler = CogVideoXDDIMScheduler.from_pretrained(str(folder / "scheduler"))
    scheduler.set_timesteps(5)
    model = cogvideox_model(folder)
    grid = torch.cat([model.schedule.logsnrs_at(scheduler.timesteps), torch.tensor([float("inf")])]).float()
    x, _, context = model_inputs("cogvideox", model.unet)
    x = x[:1]
    for i in (0, 2, 4):  # from zero SNR (timestep 999), an inner step, the last step (to x0)
        def denoise(z, logsnr):
            return model.denoise(z, logsnr, context[:1], None)

        ours = run_sampler("ddim", denoise, x, grid[i:i + 2], alpha_sigma=model.schedule.alpha_sigma)
        t = scheduler.timesteps[i]
        with torch.no_grad():
            v = reference_prediction("cogvideox", model.unet, model.unet.transformer, x, grid[i:i + 1], context[:1])
        want = scheduler.step(v.transpose(1, 2), t, x.transpose(1, 2), return_dict=False)[0].transpose(1, 2)
        torch.testing.assert_close(ours, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind, guidance", [("cogvideox", 1.0), ("cogvideox", 6.0), ("cogvideox15", 1.0),
                                             ("cogvideox15", 6.0)])
def test_cogvideox_sampled_video_equals_cogvideox_pipeline(tiny_video, kind, guidance):
    """CogVideoX 1.0, and 1.5 (temporal patches of 2: 9 frames are 3 latent frames, so both sample 4 and
    drop the first before decoding)."""
    from diffusers import CogVideoXPipeline

    folder = tiny_video(kind)
    model = cogvideox_model(folder)
    lead = 1 if kind == "cogvideox15" else 0
    assert model.frame_multiple == 1 + lead
    pipe = CogVideoXPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn(1, 4, 3 + lead, 4, 4, generator=torch.Generator().manual_seed(3))  # 9 frames of 16 x 16
    kwargs = dict(height=16, width=16, num_frames=9, num_inference_steps=4, guidance_scale=guidance,
                  max_sequence_length=16)
    want_latents = pipe(PROMPT, latents=latents.transpose(1, 2).clone(), output_type="latent", **kwargs).frames
    want_video = pipe(PROMPT, latents=latents.transpose(1, 2).clone(), output_type="pt", **kwargs).frames

    pipe.scheduler.set_timesteps(4)
    grid = torch.cat([model.schedule.logsnrs_at(pipe.scheduler.timesteps), torch.tensor([float("inf")])]).float()
    denoise = model.guided_denoiser([PROMPT], fps=8.0, guidance_scale=guidance)
    z = run_sampler("ddim", denoise, latents, grid, alpha_sigma=model.schedule.alpha_sigma)
    torch.testing.assert_close(z, want_latents.transpose(1, 2), rtol=0, atol=1e-4)
    video = model.first_stage.decode(z[:, :, lead:]).clamp(-1, 1)
    assert want_video.shape[1] == 9
    torch.testing.assert_close((video.transpose(1, 2) + 1) / 2, want_video, rtol=0, atol=1e-4)
    assert want_latents.abs().max() > 0.1
    # the default time grid starts at zero SNR too, so model.sample takes the pipeline's first step
    assert model.schedule.sampling_logsnrs(4)[0] == grid[0] == float("-inf")
    # model.sample (on latentvid's own grid) draws the leading latent frame itself and drops it
    video = model.sample([PROMPT], num_frames=9, height=16, width=16, steps=4, guidance_scale=guidance,
                         generator=[torch.Generator().manual_seed(7)])
    noise = torch.randn(1, 4, 3 + lead, 4, 4, generator=torch.Generator().manual_seed(7))
    z = run_sampler("ddim", denoise, noise, model.schedule.sampling_logsnrs(4), alpha_sigma=model.schedule.alpha_sigma)
    torch.testing.assert_close(video, model.first_stage.decode(z[:, :, lead:]).clamp(-1, 1), rtol=0, atol=1e-5)


def test_cogvideox15_trains_on_the_first_latent_frame_put_in_front(tiny_video):
    from latentvid.models.latent_diffusion import lead_with_first_frame

    z = torch.randn(2, 4, 3, 4, 4)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    led, led_mask = lead_with_first_frame(z, mask, 2)
    torch.testing.assert_close(led, torch.cat([z[:, :, :1], z], 2), rtol=0, atol=0)
    assert led_mask.tolist() == [[True] * 4, [True, True, True, False]]
    assert lead_with_first_frame(led, led_mask, 2)[0] is led and lead_with_first_frame(z, mask, 1)[0] is z
    model = cogvideox_model(tiny_video("cogvideox15"))
    seen = []
    model.unet.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    batch = {"video": torch.rand(2, 3, 9, 16, 16) * 2 - 1, "caption": [PROMPT] * 2, "fps": torch.full((2,), 8.0),
             "frame_mask": torch.ones(2, 9, dtype=torch.bool)}
    loss = model.train().diffusion_loss(batch, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and seen[-1] == (2, 4, 4, 4, 4)  # 3 latent frames + the first one again
    from latentvid.pipelines.frames import image_to_video

    with pytest.raises(ValueError, match="takes multiples of 2 .CogVideoX 1.5.: the frame tools do not pad"):
        image_to_video(model.eval(), batch["video"][:1, :, 0], [PROMPT], 9)


@pytest.mark.parametrize("guidance", [1.0, 6.0])
def test_cogvideox_image_to_video_equals_cogvideox_image_to_video_pipeline(tiny_video, guidance):
    """CogVideoX 1.0 I2V: the image's latents beside the noisy ones on the channels, the first frame generated."""
    from diffusers import CogVideoXImageToVideoPipeline

    folder = tiny_video("cogvideox-i2v")
    model = cogvideox_model(folder, frame_conditioning=True)
    assert model.frame_conditioned and not model.pins_known_frames
    pipe = CogVideoXImageToVideoPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    latents = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    kwargs = dict(height=16, width=16, num_frames=9, num_inference_steps=4, guidance_scale=guidance,
                  max_sequence_length=16)
    # the pipeline samples the image's VAE posterior with its generator: draw the same latents here
    want = pipe(image=(image[0] + 1) / 2, prompt=PROMPT, latents=latents.transpose(1, 2).clone(),
                generator=torch.Generator().manual_seed(11), output_type="latent", **kwargs).frames
    with torch.no_grad():
        first = pipe.vae.encode(image[:, :, None]).latent_dist.sample(torch.Generator().manual_seed(11))
    known = torch.cat([first * pipe.vae.config.scaling_factor, torch.zeros(1, 4, 2, 4, 4)], 2)

    pipe.scheduler.set_timesteps(4)
    grid = torch.cat([model.schedule.logsnrs_at(pipe.scheduler.timesteps), torch.tensor([float("inf")])]).float()
    denoise = model.frames_denoiser([PROMPT], 8.0, guidance, known, torch.tensor([[True, False, False]]),
                                    method="trained")
    z = run_sampler("ddim", denoise, latents, grid, alpha_sigma=model.schedule.alpha_sigma)
    torch.testing.assert_close(z, want.transpose(1, 2), rtol=0, atol=1e-4)
    assert (z[:, :, 0] - known[:, :, 0]).abs().max() > 1e-3  # frame 0 is generated, not pinned
    with pytest.raises(ValueError, match="image-to-video transformer .* set frame_conditioning: true"):
        CogVideoXTransformer(str(folder))
    with pytest.raises(ValueError, match="frame_conditioning needs a CogVideoX 1.0 image-to-video transformer"):
        CogVideoXTransformer(str(tiny_video("cogvideox")), frame_conditioning=True)


def test_cogvideox_image_to_video_trains_on_its_given_frames_too(tiny_video):
    from latentvid.diffusion.frame_masks import FrameMasks

    model = cogvideox_model(tiny_video("cogvideox-i2v"), frame_conditioning=True)
    model.frame_masks = FrameMasks(none=0.0, first=1.0, first_k=0.0, last_k=0.0, every_k=0.0)
    seen = []
    model.unet.transformer.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs["hidden_states"]),
                                                 with_kwargs=True)
    batch = {"video": torch.rand(2, 3, 9, 16, 16) * 2 - 1, "caption": [PROMPT] * 2, "fps": torch.full((2,), 8.0),
             "frame_mask": torch.ones(2, 9, dtype=torch.bool)}
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    with torch.no_grad():
        loss = model.diffusion_loss(batch, generator=g())
        z0 = model.first_stage.encode(batch["video"])
    given = seen[-1].transpose(1, 2)[:, 4:]  # (B, C, T, h, w): the image half of the input
    torch.testing.assert_close(given[:, :, 0], z0[:, :, 0])
    assert not given[:, :, 1:].any()
    # frame 0 stays in the loss: a network that generates it must learn to
    real = model.unet.forward

    def bumped(*args, **kwargs):  # the prediction off by 100 on frame 0 only
        out = real(*args, **kwargs).clone()
        out[:, :, 0] += 100.0
        return out

    model.unet.forward = bumped
    with torch.no_grad():
        assert float(model.diffusion_loss(batch, generator=g())) > float(loss) + 100.0
    model.unet.forward = real
    from latentvid.pipelines.frames import image_to_video

    video = image_to_video(model.eval(), batch["video"][:1, :, 0], [PROMPT], 9,
                           generator=torch.Generator().manual_seed(0))
    assert video.shape == (1, 3, 9, 16, 16) and torch.isfinite(video).all()


def test_cogvideox_sample_runs_every_sampler(tiny_video):
    model = cogvideox_model(tiny_video("cogvideox"))
    for sampler in ("ddim", "ancestral", "dpmpp_2m", "heun"):
        video = model.sample([PROMPT], num_frames=9, height=16, width=16, steps=3, sampler=sampler,
                             generator=torch.Generator().manual_seed(0))
        assert video.shape == (1, 3, 9, 16, 16) and torch.isfinite(video).all(), sampler


def test_cogvideox_errors(tiny_video):
    folder = tiny_video("cogvideox")
    net = CogVideoXTransformer(str(folder))
    x, logsnr, context = model_inputs("cogvideox", net)
    with pytest.raises(ValueError, match="max_text_seq_length=16"):
        net(x, logsnr, context[:, :8])
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[:, 10:] = False
    with pytest.raises(ValueError, match="attends to every text token"):
        net(x, logsnr, context, mask)
    with pytest.raises(ValueError, match="num_frames=5 does not fit the CogVideoX VAE"):
        DiffusersCogVideoXVAE(str(folder)).encode(torch.zeros(1, 3, 5, 16, 16))


# ---- LTX-Video ------------------------------------------------------------------------------------
def ltx_model(folder: Path, lr: float = 1e-4, **unet) -> LatentDiffusion:
    return LatentDiffusion(
        unet=LTXVideoTransformer(str(folder), **unet),
        text_encoder=T5TextEncoder(str(folder), max_length=128, use_attention_mask=False),
        first_stage=DiffusersLTXVideoVAE(str(folder)),
        schedule=RectifiedFlowSchedule(shift=3.0),
        target="flow", guidance_scale=3.0, sample_steps=4, lr=lr, warmup_steps=0).eval()


def test_pack_latents_round_trip():
    x = torch.randn(2, 8, 4, 6, 4)
    for p, p_t in ((1, 1), (2, 2)):
        tokens = pack_latents(x, p, p_t)
        assert tokens.shape == (2, 4 * 6 * 4 // (p * p * p_t), 8 * p * p * p_t)
        torch.testing.assert_close(unpack_latents(tokens, 4, 6, 4, p, p_t), x, rtol=0, atol=0)
    from diffusers import LTXPipeline

    torch.testing.assert_close(pack_latents(x, 2, 2), LTXPipeline._pack_latents(x, 2, 2), rtol=0, atol=0)


def test_ltx_prediction_equals_diffusers_transformer(tiny_video):
    from diffusers import LTXVideoTransformer3DModel

    folder = tiny_video("ltx")
    ours = LTXVideoTransformer(str(folder)).eval()
    ref = LTXVideoTransformer3DModel.from_pretrained(str(folder / "transformer")).eval()
    x, logsnr, context = model_inputs("ltx", ours)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[0, 6:] = False
    fps = torch.tensor([25.0, 8.0])
    with torch.no_grad():
        got = ours(x, logsnr, context, mask, fps)
        for i in range(2):  # per sample: the pipeline's RoPE scale is (tf / frame_rate, sf, sf)
            out = ref(pack_latents(x[i:i + 1]), context[i:i + 1], (1000 * flow_sigma(logsnr[i:i + 1])).float(),
                      mask[i:i + 1], num_frames=3, height=4, width=4,
                      rope_interpolation_scale=(4 / float(fps[i]), 4, 4), return_dict=False)[0]
            torch.testing.assert_close(got[i:i + 1], unpack_latents(out, 3, 4, 4), rtol=0, atol=1e-5)
        assert (got - ours(x, logsnr, context, mask, torch.full((2,), 25.0))).abs()[1].max() > 1e-5  # fps matters


def ltx_scheduler_grid(scheduler, steps: int, tokens: int):
    """LTXPipeline's sigmas for ``steps`` and a clip of ``tokens`` latent tokens, as our logSNR grid."""
    import numpy as np
    from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

    cfg = scheduler.config
    mu = calculate_shift(tokens, cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift, cfg.max_shift)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    sig = scheduler.sigmas
    return torch.cat([logsnr_from_flow_sigma(sig[:-1].double()), torch.tensor([float("inf")])]).float()


def test_ltx_step_equals_flow_match_euler(tiny_video):
    from diffusers import FlowMatchEulerDiscreteScheduler

    folder = tiny_video("ltx")
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(folder / "scheduler"))
    grid = ltx_scheduler_grid(scheduler, 5, tokens=3 * 4 * 4)
    model = ltx_model(folder)
    x, _, context = model_inputs("ltx", model.unet)
    x, context = x[:1], context[:1]
    for i in (0, 2, 4):
        def denoise(z, logsnr):
            return model.denoise(z, logsnr, context, torch.ones(1, 16, dtype=torch.bool), torch.full((1,), 25.0))

        ours = run_sampler("ddim", denoise, x, grid[i:i + 2], alpha_sigma=model.schedule.alpha_sigma)
        t = scheduler.timesteps[i]
        with torch.no_grad():
            v = reference_prediction("ltx", model.unet, model.unet.transformer, x, grid[i:i + 1], context)
        scheduler._step_index = i
        want = scheduler.step(pack_latents(v), t, pack_latents(x), return_dict=False)[0]
        torch.testing.assert_close(pack_latents(ours), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_ltx_sampled_video_equals_ltx_pipeline(tiny_video, guidance):
    from diffusers import LTXPipeline

    folder = tiny_video("ltx")
    model = ltx_model(folder)
    pipe = LTXPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn(1, 8, 3, 8, 8, generator=torch.Generator().manual_seed(3))  # 9 frames of 32 x 32
    kwargs = dict(height=32, width=32, num_frames=9, num_inference_steps=4, guidance_scale=guidance, frame_rate=25)
    want_latents = pipe(PROMPT, latents=pack_latents(latents), output_type="latent", **kwargs).frames
    want_video = pipe(PROMPT, latents=pack_latents(latents), output_type="pt", **kwargs).frames

    grid = ltx_scheduler_grid(pipe.scheduler, 4, tokens=3 * 8 * 8)
    denoise = model.guided_denoiser([PROMPT], fps=25.0, guidance_scale=guidance)
    z = run_sampler("ddim", denoise, latents, grid, alpha_sigma=model.schedule.alpha_sigma)
    torch.testing.assert_close(pack_latents(z), want_latents, rtol=0, atol=1e-4)
    video = model.first_stage.decode(z).clamp(-1, 1)
    torch.testing.assert_close((video.transpose(1, 2) + 1) / 2, want_video, rtol=0, atol=1e-4)
    assert want_latents.abs().max() > 0.1


def test_ltx_given_frames_go_in_clean_at_timestep_0(tiny_video):
    folder = tiny_video("ltx")
    net = LTXVideoTransformer(str(folder), frame_conditioning=True).eval()
    x, logsnr, context = model_inputs("ltx", net)
    known = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    mask = torch.tensor([[True, False, False], [True, True, False]])
    with torch.no_grad():
        got = net(x, logsnr, context, fps=torch.full((2,), 25.0), known=known, known_mask=mask)
        # the transformer as LTXImageToVideoPipeline calls it: given frames clean, their tokens at timestep 0
        x_in = torch.where(mask[:, None, :, None, None], known, x)
        per_token = (1000 * flow_sigma(logsnr)).float()[:, None, None] * (~mask).float()[:, :, None]  # (B, T, 1)
        out = net.transformer(pack_latents(x_in), context, per_token.expand(2, 3, 16).reshape(2, 48),
                              torch.ones(context.shape[:2], dtype=torch.bool), num_frames=3, height=4, width=4,
                              rope_interpolation_scale=(4 / 25.0, 4, 4), return_dict=False)[0]
        torch.testing.assert_close(got, unpack_latents(out, 3, 4, 4), rtol=0, atol=1e-5)
        assert (got - net(x, logsnr, context, fps=torch.full((2,), 25.0))).abs()[:, :, 2].max() > 1e-4
    with pytest.raises(ValueError, match="frame_conditioning=False"):
        LTXVideoTransformer(str(folder))(x, logsnr, context, known=known, known_mask=mask)
    with pytest.raises(ValueError, match="known_mask must be bool"):
        net(x, logsnr, context, known=known, known_mask=mask.float())
    with pytest.raises(ValueError, match="known must be shaped like x"):
        net(x, logsnr, context, known=known[:, :, :2], known_mask=mask)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_ltx_image_to_video_equals_ltx_image_to_video_pipeline(tiny_video, guidance):
    from diffusers import LTXImageToVideoPipeline

    folder = tiny_video("ltx")
    model = ltx_model(folder, frame_conditioning=True)
    assert model.frame_conditioned
    pipe = LTXImageToVideoPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        first = model.first_stage.encode(image[:, :, None])  # (1, 8, 1, 8, 8): the image is latent frame 0
    # ready latents, the image's in frame 0 (given them, the pipeline does not sample the VAE's posterior)
    latents = torch.cat([first, torch.randn(1, 8, 2, 8, 8, generator=g)], 2)
    kwargs = dict(height=32, width=32, num_frames=9, num_inference_steps=4, guidance_scale=guidance, frame_rate=25)
    want = pipe(image=(image[0] + 1) / 2, prompt=PROMPT, latents=pack_latents(latents), output_type="latent",
                **kwargs).frames

    grid = ltx_scheduler_grid(pipe.scheduler, 4, tokens=3 * 8 * 8)
    mask = torch.tensor([[True, False, False]])
    denoise = model.frames_denoiser([PROMPT], 25.0, guidance, latents, mask, method="trained")
    z = run_sampler("ddim", denoise, latents, grid, alpha_sigma=model.schedule.alpha_sigma)
    torch.testing.assert_close(pack_latents(z), want, rtol=0, atol=1e-4)
    assert (want - pack_latents(latents)).abs().max() > 0.1


def test_ltx_trains_on_given_frames_and_animates_an_image(tiny_video):
    from latentvid.diffusion.frame_masks import FrameMasks
    from latentvid.pipelines.frames import image_to_video

    model = ltx_model(tiny_video("ltx"), frame_conditioning=True)
    model.frame_masks = FrameMasks(none=0.0, first=1.0, first_k=0.0, last_k=0.0, every_k=0.0)
    seen = []
    model.unet.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs.get("known_mask")),
                                     with_kwargs=True)
    batch = {"video": torch.rand(2, 3, 9, 32, 32) * 2 - 1, "caption": [PROMPT] * 2, "fps": torch.full((2,), 25.0),
             "frame_mask": torch.ones(2, 9, dtype=torch.bool)}
    loss = model.train().diffusion_loss(batch, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and seen[-1].tolist() == [[True, False, False]] * 2
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    video = image_to_video(model.eval(), image, [PROMPT], 9, generator=torch.Generator().manual_seed(0))
    assert video.shape == (1, 3, 9, 32, 32) and torch.isfinite(video).all()
    # the default method for it is the trained one (both guidance branches get the image)
    assert seen[-1] is not None and all(row == [True, False, False] for row in seen[-1].tolist())


def test_ltx_sample_runs_every_sampler(tiny_video):
    model = ltx_model(tiny_video("ltx"))
    for sampler in ("ddim", "ancestral", "dpmpp_2m", "heun"):
        video = model.sample([PROMPT], num_frames=9, height=16, width=16, steps=3, sampler=sampler,
                             generator=torch.Generator().manual_seed(0))
        assert video.shape == (1, 3, 9, 16, 16) and torch.isfinite(video).all(), sampler


@pytest.mark.parametrize("kind", ["wan", "cogvideox", "ltx"])
def test_bf16_base_with_float32_adapters(tiny_video, kind):
    folder = tiny_video(kind)
    cls = {"wan": WanTransformer, "cogvideox": CogVideoXTransformer, "ltx": LTXVideoTransformer}[kind]
    net = cls(str(folder), dtype="bfloat16", lora_rank=2).eval()
    lora = {n: p for n, p in net.named_parameters() if ".lora_" in n}
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora.values())
    base = {n: p for n, p in net.named_parameters() if ".lora_" not in n}
    assert all(not p.requires_grad for p in base.values())
    assert sum(p.dtype == torch.bfloat16 for p in base.values()) > len(base) // 2  # (diffusers keeps some in fp32)
    x, logsnr, context = model_inputs(kind, net)
    with torch.no_grad():
        got = net(x, logsnr, context)
        want = cls(str(folder)).eval()(x, logsnr, context)
    assert got.dtype == torch.float32
    assert (got - want).abs().max() < 0.05 * want.abs().max()  # bf16 rounding only (the adapters start at zero)


# ---- Wan 2.2 A14B: two experts --------------------------------------------------------------------
def test_wan22_routes_each_sample_to_its_expert(tiny_video):
    from diffusers import WanTransformer3DModel

    folder = tiny_video("wan22")
    net = WanTransformer(str(folder), transformer_2_subfolder="transformer_2").eval()
    assert net.boundary_ratio == 0.6  # from model_index.json
    high = WanTransformer3DModel.from_pretrained(str(folder / "transformer")).eval()
    low = WanTransformer3DModel.from_pretrained(str(folder / "transformer_2")).eval()
    x, context, _ = wan_inputs()
    sigma = torch.tensor([0.3, 0.9], dtype=torch.float64)  # timesteps 300 (low noise) and 900 (high)
    with torch.no_grad():
        got = net(x, logsnr_from_flow_sigma(sigma), context)
        for i, ref in ((0, low), (1, high)):
            want = ref(x[i:i + 1], timestep=(1000 * sigma[i:i + 1]).float(), encoder_hidden_states=context[i:i + 1],
                       return_dict=False)[0]
            torch.testing.assert_close(got[i:i + 1], want, rtol=0, atol=1e-5)
        other = high(x[:1], timestep=(1000 * sigma[:1]).float(), encoder_hidden_states=context[:1], return_dict=False)[0]
    assert (got[:1] - other).abs().max() > 1e-4  # the experts differ


def test_wan22_sampled_video_equals_wan_pipeline(tiny_video):
    from diffusers import WanPipeline

    folder = tiny_video("wan22")
    model = LatentDiffusion(
        unet=WanTransformer(str(folder), transformer_2_subfolder="transformer_2"),
        text_encoder=T5TextEncoder(str(folder), max_length=512, clean=True), first_stage=DiffusersWanVAE(str(folder)),
        schedule=RectifiedFlowSchedule(shift=3.0), target="flow").eval()
    pipe = WanPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    want = pipe(PROMPT, height=16, width=16, num_frames=9, num_inference_steps=4, guidance_scale=4.0,
                latents=latents.clone(), output_type="latent").frames
    grid = flow_match_logsnrs(4, shift=3.0)
    assert (flow_sigma(grid[:-1]) >= 0.6).sum() == 3  # both experts take steps (3 high-noise, 1 low-noise)
    z = run_sampler("ddim", model.guided_denoiser([PROMPT], 16.0, 4.0), latents, grid,
                    alpha_sigma=model.schedule.alpha_sigma)
    torch.testing.assert_close(z, want, rtol=0, atol=1e-4)


def test_wan22_lora_files_load_into_both_experts(tiny_video, tmp_path):
    from diffusers import WanPipeline

    folder = tiny_video("wan22")
    net = WanTransformer(str(folder), transformer_2_subfolder="transformer_2", lora_rank=2, lora_alpha=4).eval()
    g = torch.Generator().manual_seed(1)
    for name, p in net.named_parameters():
        if "lora_B" in name:  # as if trained
            p.data = torch.randn(p.shape, generator=g) * 0.1
    file = net.save_lora(tmp_path / "wan22.safetensors")
    second = net.lora_file(file, "transformer_2")
    assert second.name == "wan22_transformer_2.safetensors" and second.is_file()
    pipe = WanPipeline.from_pretrained(str(folder))
    pipe.load_lora_weights(str(tmp_path), weight_name=file.name)
    pipe.load_lora_weights(str(tmp_path), weight_name=second.name, load_into_transformer_2=True)
    x, context, _ = wan_inputs()
    sigma = torch.tensor([0.3, 0.9], dtype=torch.float64)
    with torch.no_grad():
        ours = net(x, logsnr_from_flow_sigma(sigma), context)
        for i, ref in ((0, pipe.transformer_2), (1, pipe.transformer)):
            want = ref(x[i:i + 1], timestep=(1000 * sigma[i:i + 1]).float(), encoder_hidden_states=context[i:i + 1],
                       return_dict=False)[0]
            torch.testing.assert_close(ours[i:i + 1], want, rtol=0, atol=1e-5)
        back = WanTransformer(str(folder), transformer_2_subfolder="transformer_2", lora_weights=str(file))
        torch.testing.assert_close(back(x, logsnr_from_flow_sigma(sigma), context), ours, rtol=0, atol=1e-5)
    assert set(net.frozen_state_keys()) == {k for k in net.state_dict() if ".lora_" not in k}
    assert any(k.startswith("transformer_2.") for k in net.frozen_state_keys())
    with pytest.raises(ValueError, match="boundary_ratio is for a two-expert model"):
        WanTransformer(str(folder), boundary_ratio=0.5)
