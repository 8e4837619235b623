"""Parsing of official (mmcv/mmseg) configs into :class:`~vitadapter.config.ModelConfig`.

The official configs are plain nested dicts (``model.backbone``, ``model.decode_head``,
``model.test_cfg``, ``data.test.pipeline``); the reference sets wrap one in a ``config.json``.
Each field is either mapped to our dataclasses, accepted because it only matters for training,
or refused with an error naming it: nothing is ignored silently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .fields import FieldReader
from .schema import (
    AuxiliaryHeadConfig,
    BackboneConfig,
    Behaviour,
    HeadConfig,
    InferenceConfig,
    ModelConfig,
    PixelDecoderConfig,
    TransformerDecoderConfig,
    UperNetConfig,
)

# ---------------------------------------------------------------------------------------------


def _one(cfgs: Any, where: str) -> Mapping[str, Any]:
    """mmcv accepts a dict or a one-element list for attn_cfgs/ffn_cfgs."""
    if isinstance(cfgs, list | tuple):
        if len(cfgs) != 1:
            raise ConfigError(f"'{where}' with {len(cfgs)} entries is not supported")
        return cfgs[0]
    return cfgs


def _parse_backbone(f: FieldReader) -> BackboneConfig:
    kind = f.require("type")
    if kind not in ("BEiTAdapter", "ViTAdapter"):
        raise ConfigError(f"unsupported value {kind!r} for '{f.path('type')}' "
                          "(supported: 'BEiTAdapter', 'ViTAdapter')")
    f.ignore("drop_path_rate", "drop_rate", "attn_drop_rate", "with_cp", "pretrained",
             "init_cfg", "use_checkpoint", "out_indices", "num_classes")
    f.expect("qk_scale", None)
    f.expect("attn_head_dim", None)
    d = BackboneConfig()
    depth = int(f.take("depth", d.depth))
    if kind == "BEiTAdapter":
        f.ignore("pretrain_size")
        f.expect("use_abs_pos_emb", False)
        f.expect("use_shared_rel_pos_bias", False)
        f.expect("window_attn", False, None)
        f.expect("window_size", None)
        extra: dict[str, Any] = {
            "kind": "beit", "img_size": int(f.take("img_size", d.img_size)),
            "use_rel_pos_bias": bool(f.take("use_rel_pos_bias", d.use_rel_pos_bias)),
            "init_values": f.take("init_values", d.init_values),
        }
    else:  # the official ViTAdapter's defaults (TIMMVisionTransformer + adapter)
        img_size = int(f.take("img_size", 224))
        pretrain = int(f.take("pretrain_size", 224))
        if pretrain != img_size:
            raise ConfigError(
                f"'{f.path('pretrain_size')}' ({pretrain}) must equal '{f.path('img_size')}' "
                f"({img_size}): the pos_embed has img_size/16 positions per side and is read "
                "on the pretrain_size/16 grid")
        f.expect("window_attn", False, None, [False] * depth)
        f.expect("window_size", None, 14, [None] * depth)
        extra = {"kind": "vit", "img_size": img_size, "use_rel_pos_bias": False,
                 "init_values": f.take("init_values", 0.0),
                 "layer_scale": bool(f.take("layer_scale", True))}
    cfg = BackboneConfig(
        patch_size=int(f.take("patch_size", d.patch_size)),
        in_channels=int(f.take("in_chans", d.in_channels)),
        embed_dim=int(f.take("embed_dim", d.embed_dim)),
        depth=depth,
        num_heads=int(f.take("num_heads", d.num_heads)),
        mlp_ratio=float(f.take("mlp_ratio", d.mlp_ratio)),
        qkv_bias=bool(f.take("qkv_bias", d.qkv_bias)),
        conv_inplane=int(f.take("conv_inplane", d.conv_inplane)),
        n_points=int(f.take("n_points", d.n_points)),
        deform_num_heads=int(f.take("deform_num_heads", d.deform_num_heads)),
        cffn_ratio=float(f.take("cffn_ratio", d.cffn_ratio)),
        deform_ratio=float(f.take("deform_ratio", d.deform_ratio)),
        with_cffn=bool(f.take("with_cffn", d.with_cffn)),
        add_vit_feature=bool(f.take("add_vit_feature", d.add_vit_feature)),
        use_extra_extractor=bool(f.take("use_extra_extractor", d.use_extra_extractor)),
        interaction_indexes=tuple(
            (int(a), int(b)) for a, b in f.take("interaction_indexes", d.interaction_indexes)
        ),
        **extra,
    )
    f.done()
    return cfg


def _parse_norm(f: FieldReader, key: str, norm_type: str) -> int | None:
    norm = f.sub(key, required=False)
    norm.expect("type", norm_type)
    groups = norm.take("num_groups")
    norm.expect("requires_grad", True)
    norm.done()
    return groups


def _parse_sine_encoding(f: FieldReader) -> int:
    f.expect("type", "SinePositionalEncoding")
    num_feats = int(f.require("num_feats"))
    f.expect("normalize", True)
    f.expect("temperature", 10000)
    f.expect("offset", 0.0, 0)
    f.expect("eps", 1e-6)
    f.ignore("scale")  # 2*pi by default; a different scale would need a new field
    f.done()
    return num_feats


def _parse_ffn(f: FieldReader, embed_dims: int) -> int:
    f.expect("type", "FFN")
    f.expect("embed_dims", embed_dims)
    channels = int(f.require("feedforward_channels"))
    f.expect("num_fcs", 2)
    f.expect("add_identity", True)
    f.ignore("ffn_drop", "dropout_layer", "with_cp", "init_cfg")
    act = f.sub("act_cfg", required=False)
    act.expect("type", "ReLU")
    act.ignore("inplace")
    act.done()
    f.done()
    return channels


def _parse_pixel_decoder(f: FieldReader, feat_channels: int) -> PixelDecoderConfig:
    f.expect("type", "MSDeformAttnPixelDecoder")
    f.ignore("init_cfg", "num_outs", "in_channels", "feat_channels", "out_channels")
    groups = _parse_norm(f, "norm_cfg", "GN") or 32
    act = f.sub("act_cfg", required=False)
    act.expect("type", "ReLU")
    act.ignore("inplace")
    act.done()
    strides = tuple(int(s) for s in f.take("strides", (4, 8, 16, 32)))

    enc = f.sub("encoder")
    enc.expect("type", "DetrTransformerEncoder")
    enc.ignore("init_cfg")
    num_layers = int(enc.require("num_layers"))
    layer = enc.sub("transformerlayers")
    layer.expect("type", "BaseTransformerLayer")
    layer.expect("operation_order", ["self_attn", "norm", "ffn", "norm"],
                 ("self_attn", "norm", "ffn", "norm"))
    layer.ignore("init_cfg", "batch_first")
    attn = FieldReader(_one(layer.require("attn_cfgs"), layer.path("attn_cfgs")),
                   layer.path("attn_cfgs"))
    attn.expect("type", "MultiScaleDeformableAttention")
    attn.expect("embed_dims", feat_channels)
    num_heads = int(attn.require("num_heads"))
    num_levels = int(attn.require("num_levels"))
    num_points = int(attn.require("num_points"))
    attn.expect("value_proj_ratio", 1.0, 1)
    attn.expect("norm_cfg", None)
    attn.ignore("im2col_step", "dropout", "batch_first", "init_cfg")
    attn.done()
    ffn = FieldReader(_one(layer.require("ffn_cfgs"), layer.path("ffn_cfgs")),
                  layer.path("ffn_cfgs"))
    ffn_channels = _parse_ffn(ffn, feat_channels)
    layer.ignore("feedforward_channels")
    layer.done()
    enc.done()

    pos_num_feats = _parse_sine_encoding(f.sub("positional_encoding"))
    f.done()
    return PixelDecoderConfig(
        num_layers=num_layers, num_heads=num_heads, num_levels=num_levels,
        num_points=num_points, ffn_channels=ffn_channels, num_groups=groups,
        pos_num_feats=pos_num_feats, strides=strides,
    )


def _parse_transformer_decoder(f: FieldReader, embed_dims: int,
                               pos_num_feats: int) -> TransformerDecoderConfig:
    f.expect("type", "DetrTransformerDecoder")
    f.expect("return_intermediate", True)
    f.ignore("init_cfg")
    num_layers = int(f.require("num_layers"))
    post_norm = f.sub("post_norm_cfg", required=False)
    post_norm.expect("type", "LN")
    post_norm.done()
    layer = f.sub("transformerlayers")
    layer.expect("type", "DetrTransformerDecoderLayer")
    layer.expect("operation_order", ["cross_attn", "norm", "self_attn", "norm", "ffn", "norm"],
                 ("cross_attn", "norm", "self_attn", "norm", "ffn", "norm"))
    layer.ignore("init_cfg", "batch_first", "feedforward_channels")
    attn = FieldReader(_one(layer.require("attn_cfgs"), layer.path("attn_cfgs")),
                   layer.path("attn_cfgs"))
    attn.expect("type", "MultiheadAttention")
    attn.expect("embed_dims", embed_dims)
    num_heads = int(attn.require("num_heads"))
    attn.ignore("attn_drop", "proj_drop", "dropout_layer", "batch_first", "init_cfg")
    attn.done()
    ffn = FieldReader(_one(layer.require("ffn_cfgs"), layer.path("ffn_cfgs")),
                  layer.path("ffn_cfgs"))
    ffn_channels = _parse_ffn(ffn, embed_dims)
    layer.done()
    f.done()
    return TransformerDecoderConfig(num_layers=num_layers, num_heads=num_heads,
                                    ffn_channels=ffn_channels, pos_num_feats=pos_num_feats)


_HEAD_TYPES = ("Mask2FormerHead", "Mask2FormerHeadFromMMSeg")
_LOSS_FIELDS = ("loss_cls", "loss_mask", "loss_dice", "train_cfg", "test_cfg", "init_cfg",
                "dropout_ratio", "ignore_index", "sampler", "channels", "num_classes")


def _parse_head(f: FieldReader) -> HeadConfig:
    f.expect("type", *_HEAD_TYPES)
    f.expect("align_corners", False)
    f.expect("input_transform", "multiple_select", None)
    f.ignore(*_LOSS_FIELDS)
    in_channels = tuple(int(c) for c in f.require("in_channels"))
    in_index = list(f.take("in_index", range(len(in_channels))))
    if in_index != list(range(len(in_channels))):
        raise ConfigError(f"unsupported value {in_index!r} for '{f.path('in_index')}'")
    feat = int(f.require("feat_channels"))
    out = int(f.require("out_channels"))
    num_things = int(f.require("num_things_classes"))
    num_stuff = int(f.require("num_stuff_classes"))
    num_queries = int(f.take("num_queries", 100))
    num_levels = int(f.take("num_transformer_feat_level", 3))
    enforce = bool(f.take("enforce_decoder_input_project", False))
    pixel = _parse_pixel_decoder(f.sub("pixel_decoder"), feat)
    dec_pos = _parse_sine_encoding(f.sub("positional_encoding"))
    decoder = _parse_transformer_decoder(f.sub("transformer_decoder"), feat, dec_pos)
    f.done()
    return HeadConfig(
        in_channels=in_channels, feat_channels=feat, out_channels=out,
        num_things_classes=num_things, num_stuff_classes=num_stuff, num_queries=num_queries,
        num_transformer_feat_level=num_levels, enforce_decoder_input_project=enforce,
        pixel_decoder=pixel, decoder=decoder,
    )


def _parse_conv_head_common(f: FieldReader) -> None:
    """Fields every mmseg conv head shares that either match ours or only matter for training."""
    norm = f.sub("norm_cfg", required=False)
    norm.expect("type", "SyncBN", "BN")
    norm.ignore("requires_grad")
    norm.done()
    act = f.sub("act_cfg", required=False)
    act.expect("type", "ReLU")
    act.ignore("inplace")
    act.done()
    f.expect("align_corners", False)
    f.expect("conv_cfg", None)
    f.ignore("loss_decode", "ignore_index", "sampler", "init_cfg", "out_channels", "threshold")


def _parse_upernet(f: FieldReader) -> UperNetConfig:
    f.expect("type", "UPerHead")
    f.expect("input_transform", "multiple_select")
    _parse_conv_head_common(f)
    in_channels = tuple(int(c) for c in f.require("in_channels"))
    in_index = list(f.take("in_index", range(len(in_channels))))
    if in_index != list(range(len(in_channels))):
        raise ConfigError(f"unsupported value {in_index!r} for '{f.path('in_index')}'")
    d = UperNetConfig()
    cfg = UperNetConfig(
        in_channels=in_channels, channels=int(f.require("channels")),
        pool_scales=tuple(int(s) for s in f.take("pool_scales", d.pool_scales)),
        num_classes=int(f.require("num_classes")),
        dropout_ratio=float(f.take("dropout_ratio", d.dropout_ratio)), auxiliary=None)
    f.done()
    return cfg


def _parse_fcn_head(f: FieldReader) -> AuxiliaryHeadConfig:
    f.expect("type", "FCNHead")
    f.expect("input_transform", None)
    f.expect("kernel_size", 3)
    f.expect("dilation", 1)
    d = AuxiliaryHeadConfig()
    loss = f.take("loss_decode") or {}
    _parse_conv_head_common(f)
    cfg = AuxiliaryHeadConfig(
        in_channels=int(f.require("in_channels")), channels=int(f.require("channels")),
        in_index=int(f.take("in_index", -1)), num_convs=int(f.take("num_convs", 2)),
        concat_input=bool(f.take("concat_input", True)),
        num_classes=int(f.require("num_classes")),
        dropout_ratio=float(f.take("dropout_ratio", d.dropout_ratio)),
        loss_weight=float(loss.get("loss_weight", 1.0)) if isinstance(loss, Mapping) else 1.0)
    f.done()
    return cfg


def _parse_test_cfg(f: FieldReader) -> dict[str, Any]:
    f.expect("mode", "slide")
    out = {"crop_size": tuple(f.require("crop_size")), "stride": tuple(f.require("stride"))}
    # Panoptic/instance switches of the base config; semantic inference ignores them.
    f.ignore("panoptic_on", "semantic_on", "instance_on", "max_per_image", "iou_thr",
             "filter_low_score", "mode")
    f.done()
    return out


_PIPELINE_NOOPS = ("LoadImageFromFile", "LoadImageFromWebcam", "RandomFlip", "ImageToTensor",
                   "DefaultFormatBundle", "Collect")


def _parse_test_pipeline(steps: Any, where: str) -> dict[str, Any]:
    """Extract img_scale, size_divisor, normalisation and TTA from an mmseg test pipeline."""
    out: dict[str, Any] = {}
    if not isinstance(steps, list | tuple):
        raise ConfigError(f"'{where}' must be a list of transforms")
    for i, step in enumerate(steps):
        f = FieldReader(step, f"{where}[{i}]")
        kind = f.require("type")
        if kind in _PIPELINE_NOOPS:
            f.ignore("keys", "to_float32", "color_type", "file_client_args", "prob",
                     "direction", "meta_keys", "flip_ratio")
        elif kind == "MultiScaleFlipAug":
            scale = f.require("img_scale")
            out["img_scale"] = (int(max(scale)), int(min(scale)))
            ratios = f.take("img_ratios")
            flip = bool(f.take("flip", False))
            f.ignore("flip_direction")
            if ratios is not None or flip:
                out["tta_ratios"] = tuple(float(r) for r in (ratios or [1.0]))
                out["tta_flip"] = flip
            out.update(_parse_test_pipeline(f.require("transforms"), f.path("transforms")))
        elif kind == "Resize":
            f.expect("keep_ratio", True)
            if "img_scale" in step:
                scale = f.take("img_scale")
                out["img_scale"] = (int(max(scale)), int(min(scale)))
        elif kind == "ResizeToMultiple":
            out["size_divisor"] = int(f.take("size_divisor", 32))
            f.expect("interpolation", None, "bilinear")
        elif kind == "Normalize":
            out["mean"] = tuple(float(v) for v in f.require("mean"))
            out["std"] = tuple(float(v) for v in f.require("std"))
            out["to_rgb"] = bool(f.take("to_rgb", True))
        elif kind == "PadShortSide":
            f.ignore("size", "pad_val", "seg_pad_val")  # we always pad short sides to the crop
        else:
            raise ConfigError(f"unsupported transform {kind!r} at '{f.path('type')}'")
        f.done()
    return out


# Top-level keys of a dumped mmcv config that only concern training, logging or data paths.
_RUNTIME_KEYS = (
    "dataset_type", "data_root", "img_norm_cfg", "crop_size", "train_pipeline", "test_pipeline",
    "optimizer", "optimizer_config", "lr_config", "runner", "checkpoint_config", "evaluation",
    "log_config", "dist_params", "log_level", "load_from", "resume_from", "workflow",
    "cudnn_benchmark", "work_dir", "gpu_ids", "seed", "device", "fp16", "pretrained",
    "norm_cfg", "find_unused_parameters", "auto_resume", "total_iters", "opencv_num_threads",
    "mp_start_method", "num_things_classes", "num_stuff_classes", "num_classes",
)
# Top-level keys of the reference-set config.json files that describe the set, not the model.
_REFERENCE_SET_KEYS = (
    "set", "variant", "produced_by", "behaviour", "seed", "dataset", "num_classes",
    "set_parameters", "image", "slide_windows_y1_y2_x1_x2", "crop_inputs", "randomisation",
    "checkpoint", "stats", "sensitivity", "reference_forward_seconds",
)


def config_from_official(data: Mapping[str, Any], *, name: str = "custom",
                         behaviour: Behaviour | None = None) -> ModelConfig:
    """Build a :class:`ModelConfig` from an official (mmcv) config dict.

    Accepts the merged config (``{"model": ..., "data": ...}``), a bare ``model`` dict, or a
    reference-set ``config.json`` (``{"config": {...}, "modelscope_injector_extractor_residual":
    ...}``). Fields this package does not reproduce raise :class:`ConfigError` naming them.
    """
    top = FieldReader(data, "")
    if "config" in data:  # a reference-set config.json
        flag = top.take("modelscope_injector_extractor_residual", False)
        if behaviour is None:
            behaviour = "modelscope" if flag else "official"
        dataset = str(data.get("dataset", "coco_stuff164k")).replace("_", "-")
        name = str(data.get("set", name))
        top.ignore(*_REFERENCE_SET_KEYS)
        inner = top.require("config")
        top.done()
        return config_from_official(inner, name=name, behaviour=behaviour).replace(
            dataset=_canonical_dataset(dataset))
    if "backbone" in data:  # a bare model dict
        data = {"model": data}
        top = FieldReader(data, "")

    model = top.sub("model")
    model_type = model.require("type")
    model.ignore("pretrained", "train_cfg", "init_cfg", "neck")
    backbone = _parse_backbone(model.sub("backbone"))
    head: HeadConfig | UperNetConfig
    if model_type == "EncoderDecoder":
        head = _parse_upernet(model.sub("decode_head"))
        if "auxiliary_head" in _model_data(data):
            aux = _parse_fcn_head(model.sub("auxiliary_head"))
            head = dataclasses.replace(head, auxiliary=aux)
    elif model_type in ("EncoderDecoderMask2Former", "EncoderDecoderMask2FormerAug"):
        head = _parse_head(model.sub("decode_head"))
    else:
        raise ConfigError(f"unsupported value {model_type!r} for 'model.type' (supported: "
                          "'EncoderDecoder' with UPerHead, 'EncoderDecoderMask2Former')")
    test_cfg = model.take("test_cfg") or top.take("test_cfg")
    model.done()

    test_kwargs: dict[str, Any] = {}
    if test_cfg is not None:
        test_kwargs.update(_parse_test_cfg(FieldReader(test_cfg, "model.test_cfg")))
    if "data" in data:
        data_f = top.sub("data")
        test_split = data_f.sub("test", required=False)
        if "pipeline" in data["data"].get("test", {}):
            test_kwargs.update(_parse_test_pipeline(test_split.require("pipeline"),
                                                    "data.test.pipeline"))
        test_split.ignore("type", "data_root", "img_dir", "ann_dir", "split", "test_mode")
        test_split.done()
        data_f.ignore("samples_per_gpu", "workers_per_gpu", "train", "val")
        data_f.done()
    top.ignore(*_RUNTIME_KEYS, "CLASSES", "PALETTE")
    top.done()
    if "crop_size" not in test_kwargs:
        test_kwargs["crop_size"] = (backbone.img_size, backbone.img_size)
    return ModelConfig(name=name, backbone=backbone, head=head,
                       inference=InferenceConfig(**test_kwargs),
                       behaviour=behaviour or "official")


def _model_data(data: Mapping[str, Any]) -> Mapping[str, Any]:
    model = data.get("model", {})
    return model if isinstance(model, Mapping) else {}


def _canonical_dataset(name: str) -> str:
    return {"cocostuff164k": "coco-stuff164k", "cocostuff10k": "coco-stuff10k",
            "pascal-context59": "pascal-context-59"}.get(name, name)


