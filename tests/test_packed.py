"""Packed (unpadded) Transformer layers and the fast CPU dropout: the same maths as the padded torch / Hugging
Face forward at every real token, the same gradients, and a dropout that drops p of the elements."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from vlrb.backbones import dropout as fast
from vlrb.backbones.packed import Packing, bert_layer, encoder_layer


def _mask(lengths, width):
    return (torch.arange(width)[None] < torch.as_tensor(lengths)[:, None]).long()


def test_packing_round_trip_keeps_real_tokens_and_zeros_padding():
    mask = _mask([3, 1, 4], 4)
    x = torch.arange(3 * 4 * 2, dtype=torch.float32).view(3, 4, 2)
    pk = Packing(mask)
    packed = pk.pack(x)
    assert packed.shape == (8, 2)
    assert torch.equal(packed[:3], x[0, :3]) and torch.equal(packed[3], x[1, 0]) and torch.equal(packed[4:], x[2])
    back = pk.unpack(packed)
    assert torch.equal(back[mask.bool()], x[mask.bool()])
    assert (back[~mask.bool()] == 0).all()
    dense = Packing(torch.ones(2, 3))
    assert dense.key_mask is None and torch.equal(dense.unpack(dense.pack(x[:2, :3])), x[:2, :3])


@pytest.mark.parametrize("lengths", [[3, 1, 4], [4, 4, 4]])
def test_packing_to_a_multiple_of_rows_adds_rows_that_are_never_read_back(lengths):
    mask = _mask(lengths, 4)
    x = torch.randn(3, 4, 5)
    pk = Packing(mask, multiple=16)
    packed = pk.pack(x)
    assert packed.shape == (16, 5)
    garbage = packed.clone()
    garbage[sum(lengths):] = float("nan")  # the extra rows may hold anything: unpack ignores them
    back = pk.unpack(garbage)
    assert torch.equal(back[mask.bool()], x[mask.bool()]) and (back[~mask.bool()] == 0).all()
    q = torch.randn(16, 15)
    q[sum(lengths):] = float("nan")
    assert torch.isfinite(pk.attention(q, heads=1, dropout=0.0)[:sum(lengths)]).all()


def _tiny_bert(dropout=0.0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertModel(cfg, add_pooling_layer=False)


def test_bert_layer_packed_equals_the_hugging_face_padded_forward_and_its_gradients():
    from transformers.masking_utils import create_bidirectional_mask

    model = _tiny_bert()
    model.train()  # dropout 0: training mode, deterministic
    mask = _mask([7, 3, 5], 7)
    ids = torch.randint(5, 100, (3, 7)) * mask
    real = mask.bool()

    def run(packed: bool):
        model.zero_grad()
        x = model.embeddings(input_ids=ids)
        if packed:
            pk = Packing(mask)
            y = pk.pack(x)
            for layer in model.encoder.layer:
                y = bert_layer(layer, y, pk)
            y = pk.unpack(y)
        else:
            m4 = create_bidirectional_mask(config=model.config, inputs_embeds=x, attention_mask=mask)
            y = x
            for layer in model.encoder.layer:
                out = layer(y, m4)
                y = out[0] if isinstance(out, tuple) else out
        (y[real] ** 2).sum().backward()
        return y[real].detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref, ref_grads = run(False)
    got, got_grads = run(True)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert ref_grads.keys() == got_grads.keys() and len(ref_grads) > 10
    for name in ref_grads:
        torch.testing.assert_close(got_grads[name], ref_grads[name], atol=1e-4, rtol=1e-4, msg=name)


def _encoder_layer_case(seed: int, norm_first: bool, lengths: list[int]):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=24, dropout=0.0, batch_first=True,
                                       norm_first=norm_first)
    return layer, _mask(lengths, 6), torch.randn(len(lengths), 6, 16, requires_grad=True)


def _output_and_grads(layer: nn.Module, x: torch.Tensor, forward) -> tuple:
    """forward(x), and the gradients of its squared sum for x and every weight of `layer`."""
    x.grad = None
    layer.zero_grad()
    out = forward(x)
    (out ** 2).sum().backward()
    return out.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in layer.named_parameters()}


def _assert_same(got: tuple, ref: tuple) -> None:
    for a, b in zip(got[:2], ref[:2]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert got[2].keys() == ref[2].keys() and len(ref[2]) > 8
    for name in ref[2]:
        torch.testing.assert_close(got[2][name], ref[2][name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("norm_first", [True, False])
def test_encoder_layer_packed_equals_torch_transformer_encoder_layer(norm_first):
    layer, mask, x = _encoder_layer_case(1, norm_first, [6, 2, 4, 6])
    real = mask.bool()
    pk = Packing(mask)
    ref = _output_and_grads(layer, x, lambda y: layer(y, src_key_padding_mask=~real)[real])
    got = _output_and_grads(layer, x, lambda y: pk.unpack(encoder_layer(layer, pk.pack(y), pk))[real])
    _assert_same(got, ref)


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("multiple", [1, 8])
def test_encoder_layer_first_only_is_the_full_layers_first_token_rows(norm_first, multiple):
    layer, mask, x = _encoder_layer_case(5, norm_first, [6, 2, 4, 5])
    pk = Packing(mask, multiple)
    # the reference: torch's padded layer, its first tokens read out
    ref = _output_and_grads(layer, x, lambda y: layer(y, src_key_padding_mask=~mask.bool())[:, 0])
    got = _output_and_grads(layer, x, lambda y: encoder_layer(layer, pk.pack(y), pk, first_only=True))
    assert got[0].shape == (4, 16)
    _assert_same(got, ref)
    assert torch.equal(Packing(mask).firsts, torch.tensor([0, 6, 8, 12]))


def test_offline_fusion_reads_out_the_cls_state_of_the_padded_encoder():
    from vlrb.backbones.offline import Fusion

    torch.manual_seed(6)
    fusion = Fusion(12, 10, hidden=16, layers=2, heads=2, n_image_tokens=4).eval()
    text, image = torch.randn(3, 5, 12), torch.randn(3, 4, 10)
    text_mask = _mask([5, 2, 3], 5)
    got = fusion(text, text_mask, image)
    # the reference: the whole padded sequence through torch's own encoder, its CLS row read out
    b = text.shape[0]
    x = torch.cat([fusion.cls.expand(b, -1, -1) + fusion.type_emb.weight[0],
                   fusion.text_proj(text) + fusion.type_emb.weight[1],
                   fusion.image_proj(image) + fusion.image_pos + fusion.type_emb.weight[2]], dim=1)
    keys = torch.cat([torch.ones(b, 1, dtype=torch.bool), text_mask.bool(), torch.ones(b, 4, dtype=torch.bool)], 1)
    cls = fusion.encoder(x, src_key_padding_mask=~keys)[:, 0]
    m = text_mask.unsqueeze(-1).float()
    skip = fusion.skip(torch.cat([(text * m).sum(1) / m.sum(1), image.mean(1)], dim=-1))
    torch.testing.assert_close(got, fusion.norm(cls + skip), atol=1e-5, rtol=1e-5)


def test_cpu_attention_with_dropout_is_sdpa_maths_with_the_fast_mask(monkeypatch):
    torch.manual_seed(2)
    pk = Packing(_mask([5, 3], 5))
    qkv = torch.randn(8, 36, requires_grad=True)
    g = torch.randn(8, 12)

    def run(dropout):
        qkv.grad = None
        out = pk.attention(qkv, heads=3, dropout=dropout)
        out.backward(g)
        return out.detach(), qkv.grad.clone()

    ref, ref_grad = run(0.0)  # torch's SDPA
    monkeypatch.setattr("vlrb.backbones.packed.fast_dropout", lambda w, p: w)  # the explicit path, nothing dropped
    out, grad = run(0.5)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-5)
    monkeypatch.undo()
    torch.manual_seed(3)
    dropped, _ = run(0.5)
    assert dropped.shape == ref.shape and not torch.allclose(dropped, ref)


def test_fast_dropout_drops_p_scales_the_rest_and_is_repeatable():
    x = torch.ones(1000, 1000)
    torch.manual_seed(0)
    y = fast.fast_dropout(x, 0.1)
    cut = round(0.1 * 65536)
    scale = 65536 / (65536 - cut)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.002  # binomial sd 0.0003 over 10^6 elements
    assert torch.all((y == 0) | ((y - scale).abs() < 1e-6))  # survivors scaled by 1 / (1 - p')
    assert y.mean().item() == pytest.approx(1.0, abs=0.003)  # unbiased
    torch.manual_seed(0)
    assert torch.equal(fast.fast_dropout(x, 0.1), y)  # the torch generator: seeds repeat runs
    assert torch.equal(fast.fast_dropout(x, 0.1, training=False), x)
    assert torch.equal(fast.fast_dropout(x, 0.0), x)
    assert (fast.fast_dropout(x, 1.0) == 0).all()
    assert (fast.fast_dropout(x, 1 - 1e-6) == 0).float().mean() > 0.9999  # p rounds to 1: torch's own dropout
    odd = fast.fast_dropout(torch.ones(3, 5, 7), 0.5)  # numel not a multiple of 4
    assert odd.shape == (3, 5, 7)


def test_fast_dropout_gradient_is_the_same_mask_and_scale():
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(4)
    y = fast.fast_dropout(x, 0.3)
    y.sum().backward()
    kept = y.detach() != 0
    scale = 65536 / (65536 - round(0.3 * 65536))
    torch.testing.assert_close(x.grad, kept.float() * scale)


def test_swap_dropout_replaces_plain_dropouts_without_touching_parameters():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2), nn.Sequential(nn.Dropout(0.3)),
                          nn.TransformerEncoderLayer(4, 1, 8, dropout=0.1, batch_first=True))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast.swap_dropout(model)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(type(m) is fast.FastDropout for m in drops)
    assert [m.p for m in drops[:2]] == [0.2, 0.3]
    assert model.state_dict().keys() == before.keys()
