"""Stable Diffusion 3 / 3.5 text-to-image (`SD3Transformer2DModel`): a stack of MMDiT
`JointTransformerBlock`s carrying two token streams, image and text, that meet in one joint
self-attention per block; each stream has its own adaLN-zero modulation and MLP. SD3.5 adds,
in its first blocks (`dual_attention_layers`), an image-only self-attention `attn2`.

Unit = one block; block j feeds block N-1-j (SD3.5-medium's 24 blocks: 0..11 feed 23..12).
Blocks take ``(hidden_states, encoder_hidden_states)`` and return ``(encoder_hidden_states,
hidden_states)``. The long skips carry and fuse the image stream only: Skip-DiT's fusion joins
features of the same image token at two depths, and the text tokens have no spatial
counterpart to fuse with. Skip-Cache's cache point stores both streams at the entry of block
N-k, which is right: the text stream there has been transformed by the same blocks k..N-k-1
as the image stream (joint attention mixes them), so the deep blocks see a text stream of the
depth they were trained at, consistent with the cached image tokens; a skipped block hands
both streams through untouched. The last block is `context_pre_only`: it returns ``(None,
hidden_states)`` (nothing reads the text after it). It is always a deep unit that runs (k >= 1),
so no method ever passes that None through a skipped block.

FORA / PAB sites: `attn` (joint image+text self-attention, "spatial"; its output is an
(image, text) tuple), `attn2` (SD3.5's image-only self-attention, "spatial"), `ff` and
`ff_context` (the image and text MLPs, "mlp"). Input norms (see `SD3Adapter.input_norm`)."""
from __future__ import annotations

import torch
from diffusers import SD3Transformer2DModel
from diffusers.models.attention import JointTransformerBlock
from torch import nn

from .base import BackboneAdapter, BlockIO, SkipCacheDefaults, plain_norm
from .family import FamilySpec, real_size
from .tiny_parts import TINY_T5, TINY_VAE, clip_tokenizer, t5_tokenizer, tiny_t5

#: the joint blocks' streams: in (image, text), out (text, image)
JOINT_IO = BlockIO(("hidden_states", "encoder_hidden_states"), ("encoder_hidden_states", "hidden_states"))


class SD3Adapter(BackboneAdapter):
    model_class = SD3Transformer2DModel
    family = "sd3"
    block_io = JOINT_IO
    # attn2 exists in dual-attention blocks only, ff_context in all but the last: each block gets
    # the attrs it has
    site_attrs = {"attn": "spatial", "attn2": "spatial", "ff": "mlp", "ff_context": "mlp"}
    # DiT's share, 4 of 28 blocks at each end on a cached step (SD3.5-medium: 3 of 24; tiny: 1 of 6).
    # start: step 0 is at t = 1000 and full anyway; like DiT / PixArt no further warm-up.
    # close: the text-to-video references (Latte, Hunyuan) end with every step full after
    # DDPM t <= 50, i.e. SNR ~ 32; a flow-matching x_t = (1 - s) x0 + s eps has that SNR at
    # s = 1 / (1 + sqrt(32)) ~ 0.15, t = 1000 s = 150. With SD3's shift 3 the last steps of 28 /
    # 40 / 50 are t ~ 200, 111, 9 / 147, 81, 9 / 121, 67, 9: the final 1-2 steps run full, as in
    # the reference (a DDPM-t close of 20-50 would leave the final step cached).
    defaults = SkipCacheDefaults(interval=2, shallow=4, start=1000.0, close=150.0, reference_units=28)

    def units(self, model: nn.Module) -> list[list[nn.Module]]:
        return [[block] for block in model.transformer_blocks]

    def hidden_dim(self, model: nn.Module) -> int:
        return model.inner_dim

    # max_shallow: the base's (U-1)//2; any k >= 1 keeps the last (context_pre_only) block running.

    def input_norm(self, block: nn.Module, attr: str) -> nn.Module | None:
        """JointTransformerBlock: attn(norm1(x), norm1_context(c)); SD3.5 dual blocks: norm1 is
        AdaLayerNormZeroX, whose one inner LayerNorm feeds both attn and attn2 (shared: None);
        ff(norm2(x) * ...); ff_context(norm2_context(c) * ...).

        `attn` reads two norms no other site reads (image `norm1.norm` outside dual blocks, text
        `norm1_context.norm` always); a Site names one: the image one where it is unshared (the
        longer stream at real resolutions: 4096 image vs 333 text tokens at 1024 px), else the
        text one."""
        if not isinstance(block, JointTransformerBlock):
            return None
        if attr == "attn":
            return plain_norm(block.norm1_context if block.use_dual_attention else block.norm1)
        return plain_norm({"attn2": None, "ff": block.norm2, "ff_context": block.norm2_context}[attr])


# ------------------------------------------------------------------------------------------
# Tooling side: configs, pipeline, sampling loop
# ------------------------------------------------------------------------------------------

SD3_CLIP_LEN = 77  # CLIP tokenizers' model_max_length: the pipeline pads both CLIP prompts to it
SD3_T5_LEN = 256  # StableDiffusion3Pipeline's max_sequence_length (T5 tokens after the CLIP ones)
SD3_TEST_TEXT_LEN = 32  # text tokens of `transformer_inputs` (short: tests)

# stabilityai/stable-diffusion-3.5-medium (and SD3-medium) scheduler config
SD3_NOISE_CONFIG = dict(num_train_timesteps=1000, shift=3.0)

# Tiny CLIP text encoders: CLIP-L / CLIP-G stand-ins of different widths. The pipeline
# concatenates their penultimate hidden states (16 + 32) and zero-pads them to the T5 width
# (joint_attention_dim), and their pooled projections (16 + 32 = pooled_projection_dim).
TINY_CLIP = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                 projection_dim=16, max_position_embeddings=SD3_CLIP_LEN, dropout=0.0, attention_dropout=0.0,
                 bos_token_id=0, eos_token_id=1, pad_token_id=1)  # ids of `clip_tokenizer`'s vocabulary
TINY_CLIP_2 = dict(TINY_CLIP, hidden_size=32, intermediate_size=64, projection_dim=32)
TINY_T5_SD3 = dict(TINY_T5, d_model=64)  # wider than both CLIPs together, so the pipeline pads them

def tiny_clip(cfg: dict, vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=vocab_size, **cfg)).eval().requires_grad_(False)


def _sd3_config(heads: int, head_dim: int, layers: int, joint_dim: int, pooled_dim: int, sample_size: int,
                pos_embed_max_size: int, dual_layers: tuple[int, ...]) -> dict:
    return dict(
        sample_size=sample_size,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=joint_dim,
        caption_projection_dim=heads * head_dim,  # the text stream runs at the inner dim
        pooled_projection_dim=pooled_dim,
        pos_embed_max_size=pos_embed_max_size,
        dual_attention_layers=dual_layers,  # SD3.5 (MMDiT-X); () is SD3.0
        qk_norm="rms_norm",
    )


SD3_MODEL_CONFIGS = {
    "tiny-sd3": {
        "tiny": True,
        # 6 blocks, D=64 (2 heads x 32); blocks 0-2 dual-attention like SD3.5's first half;
        # 16x16 latent (128 px through the 8x tiny VAE), 64 image tokens + 333 text tokens
        "transformer": _sd3_config(2, 32, 6, TINY_T5_SD3["d_model"], TINY_CLIP["projection_dim"]
                                   + TINY_CLIP_2["projection_dim"], 16, 32, (0, 1, 2)),
        # SD3's VAE: 16 latent channels, its scaling / shift factors, no quant convs
        "vae": dict(TINY_VAE, latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609,
                    use_quant_conv=False, use_post_quant_conv=False),
        "text_encoder": TINY_CLIP,
        "text_encoder_2": TINY_CLIP_2,
        "text_encoder_3": TINY_T5_SD3,
        "resolution": 128,
        "num_frames": None,
        "guidance_scale": 7.0,
    },
    # 24 blocks, D=1536 (24 x 64), blocks 0-12 dual-attention; 1024 px: 4096 image tokens
    "sd3.5-medium": real_size(_sd3_config(24, 64, 24, 4096, 2048, 128, 384, tuple(range(13))),
                              reference="stabilityai/stable-diffusion-3.5-medium", resolution=1024,
                              guidance_scale=7.0),
}


class SD3Family(FamilySpec):
    adapter_class = SD3Adapter
    pipeline_class_name = "StableDiffusion3Pipeline"
    tensor_format = "BCHW"
    default_cfg_scale = 7.0  # StableDiffusion3Pipeline's default (the 3.5-medium card suggests 4.5)
    cfg_batched_kwargs = ("hidden_states", "timestep", "encoder_hidden_states", "pooled_projections")
    scales_model_input = False  # StableDiffusion3Pipeline's loop: plain noise, the velocity to scheduler.step
    schedulers = ("flow-euler",)
    default_scheduler = "flow-euler"
    noise_config = SD3_NOISE_CONFIG
    model_configs = SD3_MODEL_CONFIGS

    def tiny_pipeline_parts(self, config):
        tok, tok2, tok3 = clip_tokenizer(SD3_CLIP_LEN), clip_tokenizer(SD3_CLIP_LEN), t5_tokenizer()
        return dict(tokenizer=tok, text_encoder=tiny_clip(config["text_encoder"], len(tok)),
                    tokenizer_2=tok2, text_encoder_2=tiny_clip(config["text_encoder_2"], len(tok2)),
                    tokenizer_3=tok3, text_encoder_3=tiny_t5(config["text_encoder_3"], len(tok3)))

    def pipeline_kwargs(self, *, labels, prompts, resolution, frames):
        return dict(prompt=prompts, height=resolution, width=resolution, output_type="latent")

    def loop_conditioning(self, transformer, *, seed, batch, cfg, frames, resolution, latent_side, generator,
                          device, dtype):
        # the pipeline's prompt embeddings: 77 CLIP + 256 T5 tokens, and both CLIPs' pooled output
        nb, c = 2 * batch if cfg else batch, transformer.config
        text = torch.randn(nb, SD3_CLIP_LEN + SD3_T5_LEN, int(c.joint_attention_dim), generator=generator)
        pooled = torch.randn(nb, int(c.pooled_projection_dim), generator=generator)
        return dict(encoder_hidden_states=text.to(device=device, dtype=dtype),
                    pooled_projections=pooled.to(device=device, dtype=dtype))

    def model_output(self, transformer, x, t, cond):
        tt = t.to(x.device) if torch.is_tensor(t) else torch.tensor(float(t), device=x.device)
        return transformer(hidden_states=x, timestep=tt.expand(x.shape[0]), return_dict=False, **cond)[0]

    def transformer_inputs(self, transformer_config, *, batch, timestep, randn, generator, device, dtype, transformer):
        tc, s = transformer_config, transformer_config["sample_size"]
        return dict(
            hidden_states=randn(batch, tc["in_channels"], s, s),
            timestep=torch.full((batch,), float(timestep), dtype=dtype, device=device),
            encoder_hidden_states=randn(batch, SD3_TEST_TEXT_LEN, tc["joint_attention_dim"]),
            pooled_projections=randn(batch, tc["pooled_projection_dim"]),
        )
