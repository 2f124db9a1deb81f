"""Hugging Face BERT folders <-> our encoder (``searchpipe.models.encoder``).

Load: any folder with a BERT ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``,
read with ``weights_only=True``), names with or without the ``bert.`` prefix, with or without
the MLM/NSP or classification heads. Our pretraining checkpoints are such folders too, so
one loader serves the bundled MiniLM, Hub downloads, exports and our own runs.

Export: a folder that ``transformers.AutoModel``, ``sentence_transformers.SentenceTransformer``
(modules.json + mean pooling) and, for a model with a classification head,
``sentence_transformers.CrossEncoder`` load as is. A sinusoidal-position model is written
with its fixed table as BERT's learned table (exactly the same function), and a
``searchpipe_position`` key in config.json so we load it back as sinusoidal.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from searchpipe.errors import InputError, RunError
from searchpipe.models.encoder import (
    EncoderConfig,
    PretrainingModel,
    SequenceClassifier,
    TransformerEncoder,
)
from searchpipe.models.resolve import resolve_model, weights_file

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "added_tokens.json",
)
AnyModel = TransformerEncoder | PretrainingModel | SequenceClassifier

# --- configs -------------------------------------------------------------------------------


def config_from_hf(raw: dict[str, Any], source: str = "config.json") -> EncoderConfig:
    """Read a BERT ``config.json`` mapping into an ``EncoderConfig``; refuse what we do not run."""
    if raw.get("model_type", "bert") != "bert":
        raise InputError(
            f"{source}: model_type is {raw.get('model_type')!r}; the built-in encoder runs BERT "
            "models only (model_type 'bert'); use a BERT folder or the 'minilm' alias"
        )
    if raw.get("hidden_act", "gelu") != "gelu":
        raise InputError(
            f"{source}: hidden_act is {raw['hidden_act']!r}; the built-in encoder implements "
            "'gelu' (erf) only"
        )
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise InputError(
            f"{source}: position_embedding_type is {raw['position_embedding_type']!r}; only "
            "'absolute' is supported"
        )
    try:
        return EncoderConfig(
            vocab_size=int(raw["vocab_size"]),
            d_model=int(raw["hidden_size"]),
            n_layers=int(raw["num_hidden_layers"]),
            n_heads=int(raw["num_attention_heads"]),
            d_ff=int(raw["intermediate_size"]),
            max_len=int(raw.get("max_position_embeddings", 512)),
            type_vocab_size=int(raw.get("type_vocab_size", 2)),
            dropout=float(raw.get("hidden_dropout_prob", 0.1)),
            position=raw.get("searchpipe_position", "learned"),
            layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
            pad_token_id=int(raw.get("pad_token_id") or 0),
        )
    except KeyError as e:
        raise InputError(f"{source}: missing key {e.args[0]!r} of a BERT config") from None
    except ValueError as e:
        raise InputError(f"{source}: {e}") from None


def config_to_hf(config: EncoderConfig) -> dict[str, Any]:
    """The ``transformers.BertConfig`` keys for an ``EncoderConfig``."""
    out: dict[str, Any] = {
        "model_type": "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "intermediate_size": config.d_ff,
        "max_position_embeddings": config.max_len,
        "type_vocab_size": config.type_vocab_size,
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.dropout,
        "hidden_act": "gelu",
        "layer_norm_eps": config.layer_norm_eps,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
        "initializer_range": 0.02,
    }
    if config.position != "learned":
        out["searchpipe_position"] = config.position
    return out


# --- weight names --------------------------------------------------------------------------

_QKV = ("query", "key", "value")
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_LAYER_PARTS = {  # HF name inside layer i -> ours; query/key/value concatenate into qkv
    "attention.output.dense": "attention.dense",
    "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "feed_forward.intermediate",
    "output.dense": "feed_forward.output",
    "output.LayerNorm": "output_norm",
}
_HEADS = {
    "cls.predictions.transform.dense": "mlm.transform.dense",
    "cls.predictions.transform.LayerNorm": "mlm.transform.LayerNorm",
    "cls.seq_relationship": "nsp.seq_relationship",
    "classifier": "classifier",
}


def _normalise_hf_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip 'bert.', rename TF-era gamma/beta, drop buffers and the tied decoder."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        name = name.removeprefix("bert.")
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
        name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
        if name.endswith(("position_ids", "token_type_ids")) or name in (
            "cls.predictions.decoder.weight",  # tied to the word embeddings
        ):
            continue
        if name == "cls.predictions.decoder.bias":  # tied to cls.predictions.bias
            out.setdefault("cls.predictions.bias", t)
            continue
        out[name] = t
    return out


def hf_to_ours(state: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """Rename a BERT state dict to ours: encoder under 'encoder.', heads under their names.

    Query/key/value are concatenated (in that order) into the fused ``qkv``.
    """
    state = _normalise_hf_names(state)
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if m := _LAYER.match(name):
            i, rest = m.groups()
            if rest.startswith("attention.self."):
                continue  # fused below
            part, _, leaf = rest.rpartition(".")
            if part not in _LAYER_PARTS:
                raise RunError(f"unknown BERT weight {name!r}; is this a BERT model?")
            out[f"encoder.layers.{i}.{_LAYER_PARTS[part]}.{leaf}"] = t
        elif name.startswith(("embeddings.", "pooler.")):
            out[f"encoder.{name}"] = t
        elif name == "cls.predictions.bias":
            out["mlm.bias"] = t
        else:
            part, _, leaf = name.rpartition(".")
            if part not in _HEADS:
                raise RunError(f"unknown BERT weight {name!r}; is this a BERT model?")
            out[f"{_HEADS[part]}.{leaf}"] = t
    for i in range(n_layers):
        for leaf in ("weight", "bias"):
            parts = [state.get(f"encoder.layer.{i}.attention.self.{p}.{leaf}") for p in _QKV]
            if any(p is None for p in parts):
                raise RunError(f"BERT weights lack layer {i}'s query/key/value {leaf}")
            out[f"encoder.layers.{i}.attention.qkv.{leaf}"] = torch.cat(parts, 0)  # type: ignore[arg-type]
    return out


def ours_to_hf(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Inverse of ``hf_to_ours``: our state dict -> BERT names (encoder names get ``prefix``)."""
    layer_parts = {v: k for k, v in _LAYER_PARTS.items()}
    heads = {v: k for k, v in _HEADS.items()}
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if name.startswith("encoder."):
            name = name.removeprefix("encoder.")
            if m := re.match(r"^layers\.(\d+)\.(.+)\.(weight|bias)$", name):
                i, part, leaf = m.groups()
                if part == "attention.qkv":
                    for p, chunk in zip(_QKV, t.chunk(3, 0), strict=True):
                        out[f"{prefix}encoder.layer.{i}.attention.self.{p}.{leaf}"] = chunk
                    continue
                name = f"encoder.layer.{i}.{layer_parts[part]}.{leaf}"
            out[prefix + name] = t
        elif name == "mlm.bias":
            out["cls.predictions.bias"] = t
        else:
            part, _, leaf = name.rpartition(".")
            out[f"{heads[part]}.{leaf}"] = t
    return out


# --- loading -------------------------------------------------------------------------------


def read_folder(folder: Path) -> tuple[EncoderConfig, dict[str, Any], dict[str, torch.Tensor]]:
    """Config, raw config.json and the BERT-named state dict of a model folder."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise InputError(
            f"model folder {folder} has no config.json; pass a folder saved by transformers, "
            "sentence-transformers or `searchpipe export`"
        )
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{cfg_path} is not valid JSON: {e}") from None
    config = config_from_hf(raw, str(cfg_path))
    wfile = weights_file(folder)
    try:
        if wfile.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(wfile))
        else:
            state = torch.load(wfile, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RunError(f"cannot read weights {wfile}: {str(e).splitlines()[0][:200]}") from None
    return config, raw, state


def _fill(module: torch.nn.Module, ours: dict[str, torch.Tensor], source: str | Path) -> None:
    """Copy ``ours`` into ``module``; missing or mis-shaped tensors are an error naming them."""
    own = module.state_dict()
    missing = sorted(set(own) - set(ours))
    if missing:
        raise RunError(f"weights in {source} lack {', '.join(missing[:5])}")
    for name, t in ours.items():
        if name in own and own[name].shape != t.shape:
            raise RunError(
                f"weight {name} in {source} has shape {tuple(t.shape)}, expected "
                f"{tuple(own[name].shape)} from its config.json"
            )
    module.load_state_dict({k: v for k, v in ours.items() if k in own}, strict=True)


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def load_model(model: str | os.PathLike[str], kind: str = "auto") -> AnyModel:
    """Load a BERT folder (or 'minilm', or our checkpoint) into our modules, in fp32, eval mode.

    ``kind``: 'encoder' (body only), 'pretraining' (MLM+NSP heads; fresh heads if the folder
    has none), 'classifier' (needs a classification head), or 'auto' (whatever heads exist).

    >>> load_model("minilm").config.d_model
    384
    """
    folder = resolve_model(model).path
    config, _, state = read_folder(folder)
    return _build(config, hf_to_ours(state, config.n_layers), kind, str(folder))


def from_transformers(hf_model: Any, kind: str = "auto") -> AnyModel:
    """Our modules holding the weights of an in-memory ``transformers`` BERT model.

    Accepts ``BertModel`` (with its pooler) and the head models (``BertForSequenceClassification``
    ...); raises ``InputError``/``RunError`` for anything else, as ``load_model`` does.
    """
    source = f"{type(hf_model).__name__} ({getattr(hf_model.config, 'name_or_path', '')})"
    config = config_from_hf(hf_model.config.to_dict(), source)
    state = {k: v.detach().float() for k, v in hf_model.state_dict().items()}
    return _build(config, hf_to_ours(state, config.n_layers), kind, source)


def _build(
    config: EncoderConfig, ours: dict[str, torch.Tensor], kind: str, source: str
) -> AnyModel:
    """Our model of ``kind`` from a state dict already in our names (see ``load_model``)."""
    has_mlm = any(k.startswith("mlm.") for k in ours)
    has_classifier = "classifier.weight" in ours
    if kind == "auto":
        kind = "classifier" if has_classifier else "pretraining" if has_mlm else "encoder"
    encoder = TransformerEncoder(config)
    _fill(encoder, _prefixed(ours, "encoder."), source)
    result: AnyModel
    if kind == "encoder":
        result = encoder
    elif kind == "pretraining":
        result = PretrainingModel(config, encoder)
        if has_mlm:
            _fill(result.mlm, _prefixed(ours, "mlm."), source)
        if "nsp.seq_relationship.weight" in ours:
            _fill(result.nsp, _prefixed(ours, "nsp."), source)
    elif kind == "classifier":
        if not has_classifier:
            raise InputError(
                f"model {source} has no classification head ('classifier.weight'); pass a "
                "cross-encoder source (BertForSequenceClassification)"
            )
        result = SequenceClassifier(config, ours["classifier.weight"].shape[0], encoder)
        _fill(result.classifier, _prefixed(ours, "classifier."), source)
    else:
        raise ValueError(f"kind={kind!r}; expected auto, encoder, pretraining or classifier")
    return result.eval()


def load_encoder(model: str | os.PathLike[str]) -> TransformerEncoder:
    """The encoder body of any model we accept (heads, if any, are ignored).

    >>> enc = load_encoder("minilm")
    """
    return load_model(model, kind="encoder")  # type: ignore[return-value]


# --- export --------------------------------------------------------------------------------


def save_hf(
    model: AnyModel,
    output: str | os.PathLike[str],
    tokenizer_from: str | os.PathLike[str] | None = None,
    sentence_transformers_from: str | os.PathLike[str] | None = None,
    max_seq_length: int | None = None,
) -> Path:
    """Write ``model`` as a Hugging Face BERT folder, with tokenizer and sentence-transformers files.

    The architecture follows the heads: ``BertModel`` (body), ``BertForPreTraining`` (MLM+NSP)
    or ``BertForSequenceClassification`` (classifier, loadable by ``CrossEncoder``). Tokenizer
    files are copied from ``tokenizer_from``; sentence-transformers files (modules.json,
    pooling, normalisation) from ``sentence_transformers_from`` when it has them, else mean
    pooling is written. Classifier folders get no modules.json: CrossEncoder reads the
    classification head from config.json.

    >>> save_hf(load_model("minilm"), "out/minilm", tokenizer_from=resolve_model("minilm").path)
    PosixPath('out/minilm')
    """
    from safetensors.torch import save_file

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    if config.position == "sinusoidal":
        # BERT has no fixed table: write ours as the learned one, which computes the same thing
        enc = model if isinstance(model, TransformerEncoder) else model.encoder
        key = "embeddings.position_embeddings.weight"
        key = key if isinstance(model, TransformerEncoder) else f"encoder.{key}"
        state[key] = enc.embeddings.position_weight().detach().float().cpu().clone()
    hf_config = config_to_hf(config)
    if isinstance(model, TransformerEncoder):
        arch = "BertModel"
        hf_state = ours_to_hf({f"encoder.{k}": v for k, v in state.items()})
    elif isinstance(model, PretrainingModel):
        arch = "BertForPreTraining"
        hf_state = ours_to_hf(state, prefix="bert.")
    else:
        arch = "BertForSequenceClassification"
        hf_state = ours_to_hf(state, prefix="bert.")
        hf_config["id2label"] = {str(i): f"LABEL_{i}" for i in range(model.num_labels)}
        hf_config["label2id"] = {f"LABEL_{i}": i for i in range(model.num_labels)}
    hf_config["architectures"] = [arch]
    if arch == "BertForPreTraining":
        hf_config["tie_word_embeddings"] = True
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
    # safetensors refuses shared storage; chunks of the fused qkv share it, so copy them apart
    save_file(
        {k: v.clone().contiguous() for k, v in hf_state.items()},
        str(out / "model.safetensors"),
        metadata={"format": "pt"},
    )
    if tokenizer_from is not None:
        copy_tokenizer(Path(tokenizer_from), out)
    if arch != "BertForSequenceClassification":
        write_sentence_transformers(
            out, config.d_model, sentence_transformers_from, max_seq_length or config.max_len
        )
    return out


def copy_tokenizer(source: Path, out: Path) -> None:
    """Copy the tokenizer files of ``source`` into ``out``; refuse a folder without any."""
    found = [n for n in TOKENIZER_FILES if (source / n).is_file()]
    if not ("tokenizer.json" in found or "vocab.txt" in found):
        raise InputError(
            f"{source} has no tokenizer (tokenizer.json or vocab.txt); pass a model or "
            "tokenizer folder that has one"
        )
    for name in found:
        if (source / name).resolve() != (out / name).resolve():
            shutil.copyfile(source / name, out / name)


def write_sentence_transformers(
    out: Path, dim: int, source: str | os.PathLike[str] | None, max_seq_length: int
) -> None:
    """modules.json + pooling (copied from ``source`` when it has them, else mean pooling)."""
    src = Path(source) if source is not None else None
    if src is not None and (src / "modules.json").is_file():
        modules = json.loads((src / "modules.json").read_text(encoding="utf-8"))
        for m in modules:
            if m.get("path") and (src / m["path"]).is_dir():
                shutil.copytree(src / m["path"], out / m["path"], dirs_exist_ok=True)
            elif m.get("path"):
                (out / m["path"]).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / "modules.json", out / "modules.json")
        for name in ("sentence_bert_config.json", "config_sentence_transformers.json"):
            if (src / name).is_file():
                shutil.copyfile(src / name, out / name)
        if (out / "sentence_bert_config.json").is_file():
            return
    else:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
        ]
        (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
        (out / "1_Pooling").mkdir(exist_ok=True)
        pooling = {
            "word_embedding_dimension": dim,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        }
        (out / "1_Pooling" / "config.json").write_text(
            json.dumps(pooling, indent=2) + "\n", encoding="utf-8"
        )
    st_config = {"max_seq_length": max_seq_length, "do_lower_case": False}
    (out / "sentence_bert_config.json").write_text(
        json.dumps(st_config, indent=2) + "\n", encoding="utf-8"
    )


def export(
    model: str | os.PathLike[str], output: str | os.PathLike[str], kind: str = "auto"
) -> Path:
    """Load any model we accept and write it back as a Hugging Face BERT folder.

    >>> export("minilm", "out/minilm-hf")
    PosixPath('out/minilm-hf')
    """
    source = resolve_model(model).path
    out = Path(output)
    if out.exists() and any(out.iterdir()) and out.resolve() != source.resolve():
        if not (out / "config.json").is_file():
            raise InputError(
                f"output folder {out} exists and is not a model folder; pass an empty or new folder"
            )
    if out.resolve() == source.resolve():
        raise InputError(f"output folder {out} is the model's own folder; pass another folder")
    loaded = load_model(source, kind=kind)
    st_max = None
    if (source / "sentence_bert_config.json").is_file():
        st_max = json.loads((source / "sentence_bert_config.json").read_text()).get(
            "max_seq_length"
        )
    return save_hf(
        loaded, out, tokenizer_from=source, sentence_transformers_from=source, max_seq_length=st_max
    )
