"""Export round trips: our encoder -> Hugging Face folder -> transformers / sentence-transformers."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from click.testing import CliRunner  # noqa: E402
from transformers import AutoModel, BertModel  # noqa: E402

from searchpipe.cli.encoder import export_cmd  # noqa: E402
from searchpipe.models.bert_io import export, load_encoder, load_model, save_hf  # noqa: E402
from searchpipe.models.encoder import (  # noqa: E402
    EncoderConfig,
    PretrainingModel,
    SequenceClassifier,
    TransformerEncoder,
)
from searchpipe.models.resolve import resolve_model  # noqa: E402
from searchpipe.models.tokenizer import load_tokenizer  # noqa: E402

SENTENCES = ["The bat flew out of the cave at night.", "Tides follow the moon.", "Hi"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():  # type: ignore[no-untyped-def]
    """One torch thread: on a shared 2-core machine, OpenMP threads waiting on each other
    make small ops many times slower; the results do not depend on the thread count."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def minilm_export(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("export") / "minilm"
    result = CliRunner().invoke(export_cmd, ["minilm", "--output", str(out)])
    assert result.exit_code == 0, result.output
    return str(out)


def encode(tok, texts, pairs=None):  # type: ignore[no-untyped-def]
    enc = tok.encode_batch(list(zip(texts, pairs, strict=True)) if pairs else texts)
    T = max(len(e.ids) for e in enc)
    ids = torch.tensor([e.ids + [0] * (T - len(e.ids)) for e in enc])
    types = torch.tensor([e.type_ids + [0] * (T - len(e.ids)) for e in enc])
    mask = (torch.arange(T)[None] < torch.tensor([len(e.ids) for e in enc])[:, None]).long()
    return ids, mask, types


def test_exported_minilm_equals_original_bert_model(minilm_export):
    original = BertModel.from_pretrained(resolve_model("minilm").path).eval()
    exported = AutoModel.from_pretrained(minilm_export).eval()
    assert isinstance(exported, BertModel)
    ids, mask, types = encode(load_tokenizer(minilm_export), SENTENCES)
    with torch.no_grad():
        a = original(input_ids=ids, attention_mask=mask, token_type_ids=types)
        b = exported(input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert torch.equal(a.pooler_output, b.pooler_output)
    for name in ("tokenizer.json", "vocab.txt", "modules.json", "1_Pooling/config.json"):
        assert os.path.isfile(os.path.join(minilm_export, name)), name


def test_sentence_transformer_mean_pooling_reproduces_ours(minilm_export):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(minilm_export, device="cpu")
    got = torch.from_numpy(st.encode(SENTENCES, convert_to_numpy=True))
    original = SentenceTransformer(str(resolve_model("minilm").path), device="cpu")
    assert torch.allclose(got, torch.from_numpy(original.encode(SENTENCES)), atol=1e-6)
    # our own encoder, mean pooling over real tokens, normalised (MiniLM's Normalize module)
    ours = load_encoder(minilm_export)
    ids, mask, types = encode(load_tokenizer(minilm_export), SENTENCES)
    with torch.no_grad():
        hidden = ours(ids, mask, types)
    mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert (F.normalize(mean, dim=-1) - got).abs().max() <= 1e-5


def test_sinusoidal_pretraining_model_round_trip(tmp_path):
    """A fixed-position model exports as learned BERT positions and loads back unchanged."""
    torch.manual_seed(0)
    config = EncoderConfig(vocab_size=30522, d_model=32, n_layers=2, n_heads=4, d_ff=64,
                           max_len=64, position="sinusoidal")  # fmt: skip
    model = PretrainingModel(config).eval()
    minilm = resolve_model("minilm").path
    save_hf(model, tmp_path, tokenizer_from=minilm, max_seq_length=64)
    ids, mask, types = encode(load_tokenizer(tmp_path), SENTENCES)
    with torch.no_grad():
        ours = model.encoder(ids, mask, types)
        hf = AutoModel.from_pretrained(tmp_path).eval()(
            input_ids=ids, attention_mask=mask, token_type_ids=types
        )
    assert (ours - hf.last_hidden_state)[mask.bool()].abs().max() <= 1e-5
    back = load_model(tmp_path)
    assert isinstance(back, PretrainingModel) and back.config.position == "sinusoidal"
    for (name, a), (_, b) in zip(
        model.state_dict().items(), back.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_cross_encoder_with_one_logit_head(tmp_path):
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    encoder = load_encoder("minilm")
    model = SequenceClassifier(encoder.config, num_labels=1, encoder=encoder).eval()
    minilm = resolve_model("minilm").path
    save_hf(model, tmp_path, tokenizer_from=minilm)
    queries = ["what do bats eat", "who won the game"]
    docs = ["Bats eat insects caught in flight at night.", "The home team won by three runs."]
    ids, mask, types = encode(load_tokenizer(tmp_path), queries, docs)
    with torch.no_grad():
        ours = model(ids, mask, types)[:, 0]
    ce = CrossEncoder(str(tmp_path), device="cpu", max_length=512)
    scores = ce.predict(list(zip(queries, docs, strict=True)), activation_fn=torch.nn.Identity())
    assert torch.allclose(torch.as_tensor(scores).float(), ours, atol=1e-5)
    back = load_model(tmp_path)
    assert isinstance(back, SequenceClassifier) and back.num_labels == 1
    assert torch.equal(back.classifier.weight, model.classifier.weight)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]


def test_export_refuses_its_own_folder_and_plain_folders(tmp_path):
    from searchpipe.errors import InputError

    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(InputError, match="not a model folder"):
        export("minilm", tmp_path)


def test_encoder_only_export_is_bert_model(tmp_path):
    torch.manual_seed(0)
    enc = TransformerEncoder(EncoderConfig(vocab_size=30522, d_model=32, n_layers=1, n_heads=2,
                                           d_ff=64, max_len=32))  # fmt: skip
    save_hf(enc.eval(), tmp_path, tokenizer_from=resolve_model("minilm").path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["BertModel"]
    ids = torch.randint(1000, 30000, (2, 32))
    with torch.no_grad():
        hf = BertModel.from_pretrained(tmp_path).eval()(input_ids=ids).last_hidden_state
        assert (enc(ids) - hf).abs().max() <= 1e-5
