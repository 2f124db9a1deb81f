"""Contextual token embeddings on our encoder with MiniLM weights: the classic "bat" finding."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from click.testing import CliRunner  # noqa: E402

from searchpipe.cli.encoder import tokens_cmd  # noqa: E402
from searchpipe.errors import InputError  # noqa: E402
from searchpipe.models.contextual import load_for_tokens, word_vectors  # noqa: E402

ANIMAL = "The bat flew out of the cave at night."
BASEBALL = "He swung the bat and hit a home run."


@pytest.fixture(scope="module")
def minilm():  # type: ignore[no-untyped-def]
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine: see tests/test_training_pretrain.py
    yield load_for_tokens("minilm")
    torch.set_num_threads(n)


def test_bat_contextual_vectors_differ_while_static_is_identical(minilm):
    encoder, tok = minilm
    (animal,) = word_vectors(encoder, tok, ANIMAL, "bat")
    (baseball,) = word_vectors(encoder, tok, BASEBALL, "bat")
    assert animal.pieces == baseball.pieces == ["bat"]
    assert animal.positions == [2] and baseball.positions == [4]
    cosine = F.cosine_similarity(animal.contextual, baseball.contextual, dim=0).item()
    assert cosine < 0.95  # clearly below 1: the two senses are told apart
    assert torch.equal(animal.static, baseball.static)
    assert torch.equal(
        animal.static, encoder.embeddings.word_embeddings.weight[tok.token_to_id("bat")]
    )
    # the oracle: transformers' BertModel gives the same contextual vector
    from transformers import BertModel

    from searchpipe.models.resolve import resolve_model

    hf = BertModel.from_pretrained(resolve_model("minilm").path).eval()
    enc = tok.encode(ANIMAL)
    with torch.no_grad():
        hidden = hf(input_ids=torch.tensor([enc.ids])).last_hidden_state[0]
    assert (hidden[2] - animal.contextual).abs().max() <= 1e-5


def test_multi_piece_word_is_averaged_and_every_occurrence_found(minilm):
    encoder, tok = minilm
    found = word_vectors(
        encoder, tok, "Photosynthesis needs light; photosynthesis stops.", "photosynthesis"
    )
    assert len(found) == 2 and len(found[0].pieces) > 1
    assert found[0].positions[0] == 1
    assert not torch.equal(found[0].contextual, found[1].contextual)


def test_missing_word_names_the_words_there(minilm):
    encoder, tok = minilm
    with pytest.raises(InputError, match="does not occur.*Batman, flew"):
        word_vectors(encoder, tok, "Batman flew.", "bat")


def test_tokens_command_prints_summary_and_json(minilm):
    runner = CliRunner()
    text = runner.invoke(tokens_cmd, ["minilm", ANIMAL, "--word", "bat"])
    assert text.exit_code == 0, text.output
    assert "wordpieces ['bat'] at positions [2]" in text.output and "dim 384" in text.output
    js = runner.invoke(tokens_cmd, ["minilm", ANIMAL, "--word", "bat", "--json"])
    (record,) = json.loads(js.output)
    assert len(record["contextual"]) == len(record["static"]) == 384
    bad = runner.invoke(tokens_cmd, ["minilm", ANIMAL, "--word", "dog"])
    assert bad.exit_code != 0 and isinstance(bad.exception, InputError)
