"""Reading released checkpoints and loading them strictly into a model.

Accepted files: the official release ``.zip`` (holding a ``.pth``/``.pth.tar``), ``.pth`` /
``.pth.tar``, ModelScope's ``pytorch_model.pt``, a bare state dict, and ``.safetensors``.
Pickle-based files are read with ``torch.load(weights_only=True)``: a file that needs arbitrary
pickled objects is refused unless the caller trusts it explicitly.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    from numpy._core import multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray  # type: ignore[no-redef]
from torch import nn

from ..config.schema import BackboneConfig
from ..errors import CheckpointError
from ..modeling.backbones import dinov3
from ..modeling.segmentor import AUXILIARY_PREFIX, checkpoint_filter
from .safetensors import load_safetensors, save_safetensors

logger = logging.getLogger(__name__)

_CHECKPOINT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".bin", ".ckpt", ".tar", ".safetensors")
_LIST_LIMIT = 12

# numpy globals that only rebuild numbers and arrays (mmcv's ``meta`` may hold numpy scalars),
# under their numpy 1 and numpy 2 module names.
_NUMPY_DATA_GLOBALS: list[Any] = [
    (getattr(multiarray, name), f"{module}.{name}")
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("scalar", "_reconstruct")
]
_NUMPY_DATA_GLOBALS += [np.ndarray, np.dtype, *{type(np.dtype(t)) for t in np.typecodes["All"]}]


@dataclass
class Checkpoint:
    """A state dict read from disk, with the class names and palette of its ``meta``."""

    state_dict: dict[str, torch.Tensor]
    classes: list[str] | None = None
    palette: list[list[int]] | None = None
    source: str = ""
    ignored_keys: list[str] = field(default_factory=list)


def read_checkpoint(path: str | Path, *, trust_checkpoint: bool = False) -> Checkpoint:
    """Read any supported checkpoint file into a normalised state dict (no model needed)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; pass the checkpoint file inside it")
    if path.suffix == ".safetensors":
        tensors, metadata = load_safetensors(path)
        return _normalise({"state_dict": tensors, "meta": _meta_from_safetensors(metadata)},
                          str(path))
    if zipfile.is_zipfile(path) and not _is_torch_zip(path):
        return _read_release_zip(path, trust_checkpoint)
    return _normalise(_torch_load(path, trust_checkpoint), str(path))


def read_backbone_checkpoint(path: str | Path, cfg: BackboneConfig | None, *,
                             trust_checkpoint: bool = False) -> Checkpoint:
    """A pretrained ViT file as the model's ``backbone.`` tensors: Meta's hub layout (DINOv3
    ``dinov3_vit*_pretrain_*.pth``: the model's own names), or for a DINOv3 backbone also
    transformers' ``DINOv3ViTModel`` safetensors."""
    ckpt = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    tensors = ckpt.state_dict
    if dinov3.is_transformers_layout(tensors):
        if cfg is None:
            raise CheckpointError(f"{ckpt.source} is a transformers DINOv3 backbone: its "
                                  "conversion needs the model's config (--model or --config)")
        if cfg.kind != "dinov3":
            raise CheckpointError(f"{ckpt.source} is a transformers DINOv3 backbone; the model's "
                                  f"backbone is {cfg.kind!r}")
        tensors = dinov3.from_transformers(tensors, cfg)
    prefixed = [k for k in tensors if k.startswith(("backbone.", "decode_head."))]
    if prefixed:
        raise CheckpointError(f"{ckpt.source} is not a backbone file: it holds segmentation-model "
                              f"keys ({_listing(prefixed)}); pass it as the checkpoint instead")
    ckpt.state_dict = {f"backbone.{k}": v for k, v in tensors.items()}
    return ckpt


def load_checkpoint(model: nn.Module, path: str | Path, *, strict: bool = True,
                    trust_checkpoint: bool = False,
                    backbone: str | Path | None = None) -> Checkpoint:
    """Load a checkpoint into ``model`` (built by :func:`vitadapter.build_model`).

    A model built on the ``meta`` device takes the checkpoint's tensors by assignment (no copy;
    read into memory, never mapped). With ``strict`` (the default) any missing, unexpected or
    mis-shaped key raises :class:`CheckpointError` listing them and the likely cause. The
    ``relative_position_index`` buffers the releases lack are regenerated; stray
    ``decode_head.conv_seg.*`` weights of old releases are ignored with a notice.

    ``backbone``: the ViT's weights as a second file (:func:`read_backbone_checkpoint`), as
    Meta distributes its DINOv3 segmentor (a backbone file and a head file without it).
    """
    ckpt = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    if backbone is not None:
        config = getattr(model, "config", None)
        _merge_backbone(ckpt, read_backbone_checkpoint(
            backbone, config.backbone if config is not None else None,
            trust_checkpoint=trust_checkpoint))
    apply_state_dict(model, ckpt.state_dict, strict=strict, source=ckpt.source)
    if ckpt.classes is not None:
        model.classes = ckpt.classes  # type: ignore[assignment]
    if ckpt.palette is not None:
        model.palette = ckpt.palette  # type: ignore[assignment]
    return ckpt


def _merge_backbone(ckpt: Checkpoint, vit: Checkpoint) -> None:
    both = sorted(set(ckpt.state_dict) & set(vit.state_dict))
    if both:
        raise CheckpointError(f"{ckpt.source} already holds backbone weights "
                              f"({_listing(both)}): pass it without a backbone checkpoint")
    ckpt.state_dict.update(vit.state_dict)
    ckpt.source = f"{ckpt.source} + {vit.source}"


def apply_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                     strict: bool = True, source: str = "checkpoint") -> None:
    """Check ``state_dict`` against ``model`` and load it (by assignment into meta models)."""
    expected, _ = checkpoint_filter(model.state_dict(), source)
    state_dict, _ = checkpoint_filter(state_dict, source)
    problems = _compare(expected, state_dict)
    if strict and any(problems.values()):
        raise CheckpointError(_mismatch_message(source, problems, expected, state_dict))
    to_load = {k: v for k, v in state_dict.items() if k not in problems["mismatched"]}
    meta_model = any(p.is_meta for p in model.parameters())
    if meta_model and problems["missing"]:
        raise CheckpointError(f"{source}: cannot fill a weightless (meta) model when keys are "
                              f"missing: {_listing(problems['missing'])}")
    dtype = next(model.parameters()).dtype
    if meta_model:
        to_load = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in to_load.items()}
    try:
        model.load_state_dict(to_load, strict=False, assign=meta_model)
    except RuntimeError as exc:  # e.g. a relative_position_index that is not BEiT's
        details = "; ".join(line.strip() for line in str(exc).splitlines()[1:] if line.strip())
        raise CheckpointError(f"{source}: {details or _first_line(exc)}") from None


def convert_to_safetensors(src: str | Path, dst: str | Path, *, trust_checkpoint: bool = False,
                           overwrite: bool = False, backbone: str | Path | None = None,
                           backbone_config: BackboneConfig | None = None) -> Path:
    """Convert any supported checkpoint to a safetensors file (derived index buffers are left
    out; class names and palette go into the metadata). ``backbone``: a second file with the
    ViT's weights (Meta's DINOv3 layout: head and backbone apart), merged into the one file;
    ``backbone_config`` is needed for a transformers backbone."""
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"destination must end in .safetensors, got {dst}")
    if dst.exists() and (not overwrite or dst.resolve() == src.resolve()):
        raise CheckpointError(f"{dst} already exists; choose another name"
                              + ("" if dst.resolve() == src.resolve() else " or pass --force"))
    if dst.parent.exists() and not dst.parent.is_dir():
        raise CheckpointError(f"{dst.parent} is not a directory")
    ckpt = read_checkpoint(src, trust_checkpoint=trust_checkpoint)
    if backbone is not None:
        _merge_backbone(ckpt, read_backbone_checkpoint(backbone, backbone_config,
                                                       trust_checkpoint=trust_checkpoint))
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(ckpt, dst)
    return dst


def write_safetensors(ckpt: Checkpoint, dst: Path) -> None:
    """Save a read checkpoint as safetensors, with its classes and palette as metadata."""
    tensors = ckpt.state_dict
    metadata = {"format": "vitadapter", "source": Path(ckpt.source.split("!")[0]).name}
    if ckpt.classes is not None:
        metadata["classes"] = json.dumps(ckpt.classes)
    if ckpt.palette is not None:
        metadata["palette"] = json.dumps(ckpt.palette)
    save_safetensors(tensors, dst, metadata)


# ---------------------------------------------------------------------------------------------


def _is_torch_zip(path: Path) -> bool:
    """torch.save files are zip archives too: they hold ``<name>/data.pkl``."""
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("data.pkl") for n in zf.namelist())


# Weights barely compress (a release checkpoint shrinks by a few percent in its zip); an
# archive member claiming much more than this over its compressed size is no checkpoint.
MAX_EXTRACT_RATIO = 20
MAX_EXTRACT_BYTES = 16 * 2**30


def _check_extracted_size(path: Path, member: zipfile.ZipInfo) -> None:
    """Refuse a member that would extract to far more than a checkpoint's size, before anything
    is written (zipfile never extracts past the size the archive declares)."""
    limit = min(MAX_EXTRACT_BYTES, MAX_EXTRACT_RATIO * member.compress_size + 2**20)
    if member.file_size > limit:
        raise CheckpointError(
            f"{path}: {member.filename} would extract to {member.file_size / 2**20:.0f} MB from "
            f"{member.compress_size / 2**20:.1f} MB compressed, more than a checkpoint can be "
            f"(at most {MAX_EXTRACT_RATIO}x its compressed size and "
            f"{MAX_EXTRACT_BYTES // 2**30} GiB): refused, nothing was extracted")


def _read_release_zip(path: Path, trust_checkpoint: bool) -> Checkpoint:
    with zipfile.ZipFile(path) as zf:
        members = [i for i in zf.infolist() if not i.is_dir()
                   and i.filename.lower().endswith(_CHECKPOINT_SUFFIXES)
                   and not Path(i.filename).name.startswith(".")]
        if len(members) != 1:
            names = [i.filename for i in zf.infolist()][:_LIST_LIMIT]
            what = "no checkpoint" if not members else f"{len(members)} checkpoints"
            raise CheckpointError(f"{path}: the zip holds {what} (.pth/.pth.tar/.pt); "
                                  f"contents: {names}")
        member = members[0]
        _check_extracted_size(path, member)
        with tempfile.TemporaryDirectory(prefix="vitadapter-") as tmp:
            target = Path(tmp) / Path(member.filename).name
            try:
                with zf.open(member) as fin, open(target, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 16 * 1024 * 1024)
            except (zipfile.BadZipFile, EOFError, OSError) as exc:
                raise CheckpointError(f"{path}: cannot extract {member.filename} "
                                      f"(corrupt or truncated zip?): {exc}") from None
            try:
                ckpt = read_checkpoint(target, trust_checkpoint=trust_checkpoint)
            except CheckpointError as exc:  # name the archive, not the deleted temporary copy
                raise CheckpointError(str(exc).replace(str(target),
                                                       f"{path}!{member.filename}")) from None
    ckpt.source = f"{path}!{member.filename}"
    return ckpt


def _torch_load(path: Path, trust_checkpoint: bool) -> Any:
    try:
        if trust_checkpoint:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(_NUMPY_DATA_GLOBALS):
            # not mmap=True: a file changed under a running model must not change or crash it
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise CheckpointError(f"{path}: not a readable checkpoint (corrupt, truncated, or "
                                  "not a PyTorch file)") from None
        raise CheckpointError(
            f"{path}: refusing to unpickle {found.group(1)}: this checkpoint needs code objects "
            "beyond plain tensors, which could run arbitrary code. If you trust its source, "
            "pass trust_checkpoint=True (CLI: --trust-checkpoint)") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, zipfile.BadZipFile) as exc:  # torch's unpickler on arbitrary bytes
        reason = _first_line(exc)
        detail = "" if "weights_only" in reason or isinstance(exc, KeyError) else f": {reason}"
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt, truncated, or not "
                              f"a PyTorch file){detail}") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _normalise(obj: Any, source: str) -> Checkpoint:
    """Unwrap ``state_dict``/``model`` and ``module.``; keep CLASSES and PALETTE of ``meta``."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    meta: Mapping[str, Any] = obj["meta"] if isinstance(obj.get("meta"), Mapping) else {}
    state = obj
    for key in ("state_dict", "model", "module"):
        if isinstance(obj.get(key), Mapping):
            state = obj[key]
            break
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) and not (key == "meta" and state is obj):
            raise CheckpointError(f"{source}: entry {key!r} is a {type(value).__name__}, "
                                  "not a tensor; is this a model checkpoint?")
    tensors, ignored = checkpoint_filter(
        {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, source)
    auxiliary = sum(k.startswith(AUXILIARY_PREFIX) for k in tensors)
    if auxiliary:
        logger.info("%s: has the auxiliary FCN head (%d keys): loaded for training, unused at "
                    "inference", source, auxiliary)
    return Checkpoint(
        state_dict=tensors,
        classes=_meta_classes(meta.get("CLASSES"), source),
        palette=_meta_palette(meta.get("PALETTE"), source),
        source=source,
        ignored_keys=ignored,
    )


def _meta_classes(classes: Any, source: str) -> list[str] | None:
    """The class names of a checkpoint's ``meta`` (a list or tuple of strings), checked."""
    if classes is None:
        return None
    if not isinstance(classes, list | tuple) or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(f"{source}: its meta CLASSES is {_shown(classes)}, not a list of "
                              "class names; fix or remove it (e.g. convert the file without "
                              "it), or pass --config with the classes")
    return list(classes)


def _meta_palette(palette: Any, source: str) -> list[list[int]] | None:
    """The palette of a checkpoint's ``meta`` ([r, g, b] integers 0..255 per class), checked."""
    if palette is None:
        return None
    if isinstance(palette, np.ndarray):
        palette = palette.tolist()
    if (not isinstance(palette, list | tuple)
            or not all(isinstance(rgb, list | tuple | np.ndarray) and len(rgb) == 3
                       and all(isinstance(v, int | np.integer) and not isinstance(v, bool)
                               and 0 <= v <= 255 for v in rgb) for rgb in palette)):
        raise CheckpointError(f"{source}: its meta PALETTE is {_shown(palette)}, not a list of "
                              "[r, g, b] colours (integers 0..255); fix or remove it")
    return [[int(v) for v in rgb] for rgb in palette]


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _meta_from_safetensors(metadata: Mapping[str, str]) -> dict[str, Any]:
    meta = {}
    for ours, theirs in (("classes", "CLASSES"), ("palette", "PALETTE")):
        if ours in metadata:
            try:
                meta[theirs] = json.loads(metadata[ours])
            except (ValueError, RecursionError):
                raise CheckpointError(f"the safetensors metadata '{ours}' is not valid JSON"
                                      ) from None
    return meta


def _compare(expected: Mapping[str, torch.Tensor],
             given: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mismatched = [k for k in given if k in expected and given[k].shape != expected[k].shape]
    wrong_type = [f"{k} ({given[k].dtype}, expected floating point)" for k in given
                  if k in expected and expected[k].is_floating_point()
                  and not given[k].is_floating_point()]
    return {"missing": missing, "unexpected": unexpected, "mismatched": mismatched,
            "wrong_type": wrong_type}


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > _LIST_LIMIT else "")


def _mismatch_message(source: str, problems: dict[str, list[str]],
                      expected: Mapping[str, torch.Tensor],
                      given: Mapping[str, torch.Tensor]) -> str:
    lines = [f"{source} does not fit this model:"]
    if problems["mismatched"]:
        shapes = [f"{k} {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in problems["mismatched"]]
        lines.append(f"  shape mismatch: {_listing(shapes)}")
    if problems["missing"]:
        lines.append(f"  missing: {_listing(problems['missing'])}")
    if problems["unexpected"]:
        lines.append(f"  unexpected: {_listing(problems['unexpected'])}")
    if problems["wrong_type"]:
        lines.append(f"  integer weights: {_listing(problems['wrong_type'])}")
        if not any(problems[k] for k in ("mismatched", "missing", "unexpected")):
            lines.append("  likely cause: the weights were converted to integers (a damaged "
                         "or wrongly converted file)")
            return "\n".join(lines)
    lines.append("  likely cause: " + _likely_cause(problems, expected, given))
    return "\n".join(lines)


def _likely_cause(problems: dict[str, list[str]], expected: Mapping[str, torch.Tensor],
                  given: Mapping[str, torch.Tensor]) -> str:
    def rows(sd: Mapping[str, torch.Tensor], key: str) -> int | None:
        return int(sd[key].shape[0]) if key in sd else None

    table = "backbone.blocks.0.attn.relative_position_bias_table"
    theirs, ours = rows(given, table), rows(expected, table)
    if theirs and ours and theirs != ours:
        return (f"the checkpoint was trained for {_crop_from_table(theirs)}px crops, the model "
                f"is built for {_crop_from_table(ours)}px: pick the matching preset or config")
    theirs, ours = rows(given, "decode_head.cls_embed.weight"), rows(expected,
                                                                      "decode_head.cls_embed.weight")
    if theirs and ours and theirs != ours:
        return (f"the checkpoint predicts {theirs - 1} classes, the model {ours - 1}: it belongs "
                "to another dataset; pick the matching preset or config")
    theirs, ours = rows(given, "decode_head.query_feat.weight"), rows(
        expected, "decode_head.query_feat.weight")
    if theirs and ours and theirs != ours:
        return (f"the checkpoint has {theirs} queries, the model {ours}: pick the matching "
                "preset or config")
    vit_keys = {f"backbone.{name}" for name in _vit_names(expected)}
    if problems["missing"] and set(problems["missing"]) <= vit_keys:
        return ("the checkpoint holds the adapter and head without the ViT (as Meta distributes "
                "its DINOv3 segmentor): pass the backbone file too (backbone_checkpoint=..., "
                "--backbone-checkpoint)")
    theirs_kind, ours_kind = _head_kind(given), _head_kind(expected)
    if theirs_kind and ours_kind and theirs_kind != ours_kind:
        return (f"this is a {theirs_kind} checkpoint and the model is {ours_kind}: pass the "
                f"config it was trained with (a {theirs_kind} preset with --model, or a "
                "training work dir's config.json with --config)")
    if given and not any(k.startswith(("backbone.", "decode_head.")) for k in given):
        return ("the keys carry no 'backbone.'/'decode_head.' prefix: this looks like "
                "pretrained backbone weights, not a segmentation checkpoint")
    if problems["mismatched"]:
        return "the checkpoint's model has other widths or depths: pick the matching preset"
    return "the checkpoint comes from a different architecture or a different preset"


def _vit_names(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """The names (after ``backbone.``) of the ViT's own tensors among a model's keys."""
    from ..modeling.adapter import VIT_PARTS

    return [k.removeprefix("backbone.") for k in state_dict
            if k.startswith("backbone.") and k.split(".")[1] in VIT_PARTS]
def _head_kind(state: Mapping[str, torch.Tensor]) -> str | None:
    """The head a state dict's keys belong to: UperNet (pyramid pooling) or Mask2Former."""
    if any(k.startswith("decode_head.psp_modules.") for k in state):
        return "UperNet"
    if any(k.startswith("decode_head.transformer_decoder.") for k in state):
        return "Mask2Former"
    return None


def _crop_from_table(rows: int) -> int:
    """Invert ``rows = (2 * crop / 16 - 1) ** 2 + 3``."""
    side = math.isqrt(max(rows - 3, 0))
    return (side + 1) // 2 * 16
