"""Hunyuan-DiT (`HunyuanDiT2DModel`): the long skips are native.

Blocks with `layer > L//2` carry `skip_norm` (fp32 LayerNorm 2D) and `skip_linear` (2D->D) and
fuse at block entry; the model pushes outputs of layers 0..L/2-2 and pops them at
L/2+1..L-1, so layer L-1-j receives block j. Nothing is inserted: Skip-Cache only swaps the
input of layer L-k for its cached value and lets the native fusion run."""
from __future__ import annotations

import torch
from diffusers import HunyuanDiT2DModel
from torch import nn

from .base import BackboneAdapter, SkipCacheDefaults, plain_norm
from .family import Conditioning, FamilySpec, module_device, real_size, unique_captions
from .tiny_parts import TINY_BERT, TINY_T5, TINY_VAE, bert_tokenizer, t5_tokenizer, tiny_bert, tiny_t5


class HunyuanDiTAdapter(BackboneAdapter):
    model_class = HunyuanDiT2DModel
    family = "hunyuan"
    native_skips = True
    # Reference: 2 of 40 layers (0 and 39) run on a cached step, full while t >= 700.
    defaults = SkipCacheDefaults(interval=2, shallow=1, start=700.0, close=50.0, reference_units=40)

    def units(self, model: nn.Module) -> list[list[nn.Module]]:
        return [[block] for block in model.blocks]

    def hidden_dim(self, model: nn.Module) -> int:
        return model.inner_dim

    def pairs(self, model: nn.Module) -> list[tuple[int, int]]:
        n = len(model.blocks)
        return sorted((n - 1 - deep, deep) for deep in range(n // 2 + 1, n))

    def max_shallow(self, model: nn.Module) -> int:
        # layers L-k..L-1 must all hold native skips: L-k > L//2
        n = len(model.blocks)
        return n - n // 2 - 1

    def input_norm(self, block: nn.Module, attr: str) -> nn.Module | None:
        # HunyuanDiTBlock: attn1(norm1(x, temb)), attn2(norm2(x), text), ff(norm3(x))
        return plain_norm({"attn1": block.norm1, "attn2": block.norm2, "ff": block.norm3}[attr])

    def native_skip_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {}
        for i, block in enumerate(model.blocks):
            if block.skip_linear is not None:
                out[f"blocks.{i}.skip_norm"] = block.skip_norm
                out[f"blocks.{i}.skip_linear"] = block.skip_linear
        return out

    def native_skip_linears(self, model: nn.Module) -> dict[str, nn.Linear]:
        return {
            f"blocks.{i}.skip_linear": block.skip_linear
            for i, block in enumerate(model.blocks)
            if block.skip_linear is not None
        }


# ------------------------------------------------------------------------------------------
# Tooling side: configs, pipeline, sampling loop, fine-tuning conditioning
# ------------------------------------------------------------------------------------------

# Tencent-Hunyuan/HunyuanDiT-Diffusers scheduler config
HUNYUAN_NOISE_CONFIG = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.03,
                            prediction_type="v_prediction", steps_offset=1)


def _hunyuan_config(heads: int, head_dim: int, sample_size: int, layers: int, mlp_ratio: float, cross_dim: int,
                    cross_dim_t5: int, pooled_dim: int) -> dict:
    return dict(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        hidden_size=heads * head_dim,
        in_channels=4,
        patch_size=2,
        sample_size=sample_size,
        num_layers=layers,
        mlp_ratio=mlp_ratio,
        activation_fn="gelu-approximate",
        learn_sigma=True,
        cross_attention_dim=cross_dim,
        cross_attention_dim_t5=cross_dim_t5,
        pooled_projection_dim=pooled_dim,
        text_len=77,  # the pipeline pads BERT prompts to 77 tokens
        text_len_t5=256,  # ... and T5 prompts to 256 (the attention pool needs exactly this)
        norm_type="layer_norm",
        use_style_cond_and_image_meta_size=True,  # v1.0/v1.1; v1.2 sets False
    )


HUNYUAN_MODEL_CONFIGS = {
    "tiny-hunyuan": {
        "tiny": True,
        # 6 layers: blocks 4, 5 take long skips from blocks 1, 0. Cross dims: the tiny BERT's hidden
        # size and the tiny T5's d_model (divisible by the pooler's 8 heads).
        "transformer": _hunyuan_config(2, 32, 16, 6, 4.0, 32, 32, 32),
        "vae": dict(TINY_VAE, scaling_factor=0.13025),
        "text_encoder": TINY_BERT,
        "text_encoder_2": TINY_T5,
        "resolution": 128,  # must be a multiple of 16 (pipeline floors to 16)
        "num_frames": None,
        "guidance_scale": 5.0,
    },
    "hunyuan-dit": real_size(_hunyuan_config(16, 88, 128, 40, 4.3637, 1024, 2048, 1024),
                             reference="Tencent-Hunyuan/HunyuanDiT-v1.1-Diffusers", resolution=1024, guidance_scale=5.0),
}


class HunyuanFamily(FamilySpec):
    adapter_class = HunyuanDiTAdapter
    pipeline_class_name = "HunyuanDiTPipeline"
    default_cfg_scale = 5.0
    cfg_batched_kwargs = (
        "hidden_states", "timestep", "encoder_hidden_states", "text_embedding_mask",
        "encoder_hidden_states_t5", "text_embedding_mask_t5", "image_meta_size", "style",
    )
    noise_config = HUNYUAN_NOISE_CONFIG
    model_configs = HUNYUAN_MODEL_CONFIGS

    def scheduler(self, kind, cls, kwargs, raw=False):
        if kind == "ddim":
            kwargs = dict(kwargs, set_alpha_to_one=False)
        return cls(**kwargs)

    def tiny_pipeline_parts(self, config):
        tok = bert_tokenizer()
        te = tiny_bert(config["text_encoder"], len(tok))
        tok2 = t5_tokenizer()
        te2 = tiny_t5(config["text_encoder_2"], len(tok2))
        return dict(text_encoder=te, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2, safety_checker=None,
                    feature_extractor=None, requires_safety_checker=False)

    def pipeline_kwargs(self, *, labels, prompts, resolution, frames):
        # resolution binning (a __call__ argument in diffusers 0.42) would resize 128 px to 1024 px
        return dict(prompt=prompts, height=resolution, width=resolution, output_type="latent",
                    use_resolution_binning=False)

    def loop_conditioning(self, transformer, *, seed, batch, cfg, frames, resolution, latent_side, generator,
                          device, dtype):
        nb = 2 * batch if cfg else batch
        c = transformer.config
        return self._inputs(transformer, c.text_len, c.text_len_t5, c.cross_attention_dim, c.cross_attention_dim_t5,
                            batch=nb, pixels=resolution, latent_side=latent_side, generator=generator,
                            device=device, dtype=dtype)

    def model_output(self, transformer, x, t, cond):
        tt = torch.tensor([float(t)] * x.shape[0], device=x.device).to(dtype=x.dtype)
        out = transformer(x, tt, return_dict=False, **cond)[0]
        out, _ = out.chunk(2, dim=1)  # the learned-variance half
        return out

    def finetune_conditioning(self, model, dataset, pipe, *, latent_hw, vae_scale, device, warn):
        """Captions through the pipeline's BERT and T5, plus the constant size / style / RoPE inputs."""
        if pipe is None or getattr(pipe, "text_encoder", None) is None or getattr(pipe, "text_encoder_2", None) is None:
            raise ValueError("training Hunyuan-DiT needs its pipeline's two text encoders: pass the pipeline (--pipeline)")
        n = len(dataset)
        captions = dataset.caption_list()
        if captions is None:
            warn("the data has no captions or labels: Hunyuan-DiT is trained on the empty caption only")
            captions = [""] * n
        unique, index = unique_captions(captions)
        t = _encode_captions(pipe, unique, module_device(pipe.text_encoder))
        tables = {
            "encoder_hidden_states": t["e1"],
            "text_embedding_mask": t["m1"],
            "encoder_hidden_states_t5": t["e2"],
            "text_embedding_mask_t5": t["m2"],
        }
        h, w = latent_hw
        rope = hunyuan_rotary_emb(model, h, w, device=device)
        meta = torch.tensor([[1024.0, 1024.0, h * vae_scale, w * vae_scale, 0.0, 0.0]])

        def constant(b: int) -> dict:
            return dict(
                image_meta_size=meta.repeat(b, 1).to(device),
                style=torch.zeros(b, dtype=torch.long, device=device),
                image_rotary_emb=rope,
            )

        return Conditioning(index, len(unique), tables, constant=constant,
                            description=f"captions via the pipeline's BERT + T5 ({len(unique)} unique)")

    def finetune_timestep(self, t, dtype):
        return t.to(dtype)  # the pipeline passes float timesteps

    def transformer_inputs(self, transformer_config, *, batch, timestep, randn, generator, device, dtype, transformer):
        tc, s = transformer_config, transformer_config["sample_size"]
        if transformer is None:
            with torch.device("meta"):
                transformer = self.transformer_class(**tc)
        hidden = randn(batch, tc["in_channels"], s, s)
        tt = torch.full((batch,), float(timestep), dtype=dtype, device=device)
        cond = self._inputs(transformer, tc["text_len"], tc["text_len_t5"], tc["cross_attention_dim"],
                            tc["cross_attention_dim_t5"], batch=batch, pixels=s * 8, latent_side=s,
                            generator=generator, device=device, dtype=dtype)
        return dict(hidden_states=hidden, timestep=tt, **cond)

    @staticmethod
    def _inputs(transformer, text_len, text_len_t5, dim, dim_t5, *, batch, pixels, latent_side, generator, device,
                dtype) -> dict:
        """Random text features and masks shaped like the pipeline's encoders' (drawn in this
        order from `generator`), the image size / style inputs and the RoPE."""

        def randn(*shape):
            return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

        def mask(length):
            m = torch.zeros(batch, length, dtype=torch.long)
            for i in range(batch):  # a few real tokens then padding, like a tokenised prompt
                m[i, : 3 + int(torch.randint(0, 8, (1,), generator=generator))] = 1
            return m.to(device)

        return dict(
            encoder_hidden_states=randn(batch, int(text_len), int(dim)),
            text_embedding_mask=mask(int(text_len)),
            encoder_hidden_states_t5=randn(batch, int(text_len_t5), int(dim_t5)),
            text_embedding_mask_t5=mask(int(text_len_t5)),
            image_meta_size=torch.tensor([[1024, 1024, pixels, pixels, 0, 0]] * batch, dtype=dtype, device=device),
            style=torch.zeros(batch, dtype=torch.long, device=device),
            image_rotary_emb=hunyuan_rotary_emb(transformer, latent_side, latent_side, device=device),
        )


@torch.no_grad()
def _encode_captions(pipe, unique: list[str], device, chunk: int = 64) -> dict:
    """Each caption's BERT (77 tokens) and T5 (256) embeddings and masks, the null row last."""
    cols: dict[str, list[torch.Tensor]] = {k: [] for k in ("e1", "m1", "e2", "m2")}
    nulls = {}
    for i in range(0, len(unique), chunk):
        part = unique[i : i + chunk]
        for idx, length, e, m in ((0, 77, "e1", "m1"), (1, 256, "e2", "m2")):
            pos, neg, pmask, nmask = pipe.encode_prompt(
                prompt=part, device=device, dtype=torch.float32, num_images_per_prompt=1,
                do_classifier_free_guidance=True, negative_prompt=None, max_sequence_length=length,
                text_encoder_index=idx,
            )
            cols[e].append(pos.float().cpu())
            cols[m].append(pmask.cpu())
            nulls[e], nulls[m] = neg[0].float().cpu(), nmask[0].cpu()
    return {k: torch.cat(v + [nulls[k][None]]) for k, v in cols.items()}


def hunyuan_rotary_emb(transformer: nn.Module, latent_height: int, latent_width: int, device="cpu"):
    """The 2-D RoPE ``(cos, sin)`` exactly as ``HunyuanDiTPipeline`` builds it.

    The pipeline works in pixels and hard-codes an 8x VAE (``grid = height // 8 // patch``,
    ``base_size = 512 // 8 // patch``); here the latent size is given directly.
    """
    from diffusers.models.embeddings import get_2d_rotary_pos_embed
    from diffusers.pipelines.hunyuandit.pipeline_hunyuandit import get_resize_crop_region_for_grid

    patch = transformer.config.patch_size
    grid_h, grid_w = latent_height // patch, latent_width // patch
    base_size = 512 // 8 // patch
    crops = get_resize_crop_region_for_grid((grid_h, grid_w), base_size)
    return get_2d_rotary_pos_embed(
        transformer.inner_dim // transformer.num_heads,
        crops,
        (grid_h, grid_w),
        device=device,
        output_type="pt",
    )
