"""utils.vq: the quantizer picks the nearest code (checked against torch.cdist), passes the decoder's gradient
straight through to the encoder, and its two losses and their gradients are eq. (3) of van den Oord et al.
(2017) computed by hand; perplexity and codebook use by hand; dead codes are restarted onto encoder outputs
and live ones left alone; the VQ-VAE's encode/decode are its forward pass; the GPT helpers build the joint
stream by hand, sample only image codes (equal to a plain uncached loop over GPT.forward), guide the logits
by the formula, and rerank; bad input fails clearly."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from utils import vq as Q
from utils.gpt import GPT, GPTConfig
from weights import scramble_

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = dict(atol=1e-6, rtol=1e-6)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def quantizer(K=4, D=2, beta=0.25):
    q = Q.VectorQuantizer(K, D, beta=beta)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])[:K])
    return q


def grid(vectors):
    """vectors (B, G, G, D) → (B, D, G, G)."""
    return vectors.permute(0, 3, 1, 2).contiguous()


Z = grid(torch.tensor([[[[0.1, 0.1], [0.9, 0.2]], [[0.2, 0.8], [0.6, 0.0]]]]))  # (1, 2, 2, 2): codes 0 1 / 2 1


def test_nearest_code_against_cdist():
    q = Q.VectorQuantizer(16, 3)
    z = randn(50, 3, seed=1)
    expected = torch.cdist(z, q.embedding.weight).argmin(dim=1)
    assert torch.equal(q.nearest(z), expected)
    assert quantizer().nearest(torch.tensor([[0.5, 0.0]])).item() == 0  # a tie goes to the lower index
    out = quantizer().eval()(Z)
    assert out.codes.tolist() == [[[0, 1], [2, 1]]]
    torch.testing.assert_close(out.z_q, grid(torch.tensor([[[[0.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]]])))


def test_losses_are_eq3_by_hand():
    q = quantizer(beta=0.3).eval()
    out = q(Z)
    e = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # the chosen codes, positions in order
    z = torch.tensor([[0.1, 0.1], [0.9, 0.2], [0.2, 0.8], [0.6, 0.0]])
    sq = ((z - e) ** 2).sum().item() / 8  # mean over the 8 elements
    assert out.codebook_loss.item() == pytest.approx(sq) and out.commitment_loss.item() == pytest.approx(sq)
    assert out.loss.item() == pytest.approx(1.3 * sq)


def test_straight_through_gradient_and_which_loss_trains_what():
    q = quantizer(beta=0.3).eval()
    z = Z.clone().requires_grad_(True)
    w = randn(*Z.shape, seed=2)
    (q(z).z_q * w).sum().backward()  # a decoder's gradient w arrives at z_q ...
    torch.testing.assert_close(z.grad, w, atol=0, rtol=0)  # ... and is copied to z_e unchanged
    assert q.embedding.weight.grad is None or q.embedding.weight.grad.abs().max() == 0
    # codebook loss: gradient to the codes only, 2 (e_k - z) / numel summed over the positions choosing k
    z = Z.clone().requires_grad_(True)
    q.zero_grad()
    q(z).codebook_loss.backward()
    assert z.grad is None or z.grad.abs().max() == 0
    zz, codes = Z.permute(0, 2, 3, 1).reshape(-1, 2), [0, 1, 2, 1]
    expected = torch.zeros(4, 2)
    for k, v in zip(codes, zz):
        expected[k] += 2 * (q.embedding.weight[k].detach() - v) / 8
    torch.testing.assert_close(q.embedding.weight.grad, expected, **TOL)
    # commitment: gradient 2 β (z_e - e) / numel to the encoder only
    z = Z.clone().requires_grad_(True)
    q.zero_grad()
    (q(z).loss - q(z).codebook_loss).backward()
    e = q.embedding.weight.detach()[torch.tensor(codes)]
    torch.testing.assert_close(z.grad, grid((2 * 0.3 * (zz - e) / 8).view(1, 2, 2, 2)), **TOL)
    assert q.embedding.weight.grad is None or q.embedding.weight.grad.abs().max() == 0


def test_perplexity_and_codes_used_by_hand():
    q = quantizer().eval()
    out = q(Z)  # codes 0, 1, 2, 1 of K = 4: shares 1/4, 1/2, 1/4, 0
    assert out.perplexity.item() == pytest.approx(math.exp(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))))
    assert out.used.item() == pytest.approx(3 / 4)
    one = grid(torch.tensor([[[[0.1, 0.1], [0.0, 0.1]], [[0.1, 0.0], [0.0, 0.0]]]]))  # all code 0
    assert q(one).perplexity.item() == pytest.approx(1.0) and q(one).used.item() == pytest.approx(1 / 4)


def test_usage_is_a_moving_average_in_training_only():
    q = quantizer()
    q.decay = 0.9
    q.eval()(Z)
    torch.testing.assert_close(q.usage, torch.full((4,), 0.25))
    q.train()(Z)
    torch.testing.assert_close(q.usage, 0.9 * torch.full((4,), 0.25) + 0.1 * torch.tensor([0.25, 0.5, 0.25, 0.0]))


def test_restart_dead_codes():
    q = Q.VectorQuantizer(6, 2)
    before = q.embedding.weight.detach().clone()
    q.usage.copy_(torch.tensor([0.5, 0.001, 0.3, 0.0, 0.199, 0.05]))
    z = randn(2, 2, 3, 3, seed=3)  # 18 encoder outputs
    assert q.restart_dead_codes_(z, threshold=0.06, generator=torch.Generator().manual_seed(0)) == 3
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 2)
    after = q.embedding.weight.detach()
    for k in (1, 3, 5):  # dead: each now one of the encoder outputs, all different
        assert (vectors - after[k]).abs().sum(1).min() == 0
        assert q.usage[k].item() == pytest.approx(1 / 6)
    assert len({tuple(after[k].tolist()) for k in (1, 3, 5)}) == 3
    torch.testing.assert_close(after[[0, 2, 4]], before[[0, 2, 4]], atol=0, rtol=0)  # alive: untouched
    torch.testing.assert_close(q.usage[[0, 2, 4]], torch.tensor([0.5, 0.3, 0.199]))
    assert q.restart_dead_codes_(z, threshold=0.06) == 0
    q.usage.copy_(torch.tensor([0.9, 0.017, 0.02, 0.02, 0.02, 0.023]))
    assert q.restart_dead_codes_(z) == 0  # the default threshold, 1 / (10 K) = 0.01667: no code is below it...
    q.usage[1] = 0.0166
    assert q.restart_dead_codes_(z) == 1  # ... and 0.0166 is


# --- the VQ-VAE ------------------------------------------------------------------------------------------

CFG = Q.VQVAEConfig(image_size=16, hidden=8, downsample=2, codebook_size=8, code_dim=4)


def model(seed=0):
    return scramble_(Q.VQVAE(CFG), seed).eval()


def test_vqvae_shapes_encode_decode_and_forward_agree():
    m, x = model(), randn(3, 3, 16, 16, seed=1)
    out = m(x)
    assert out.recon.shape == x.shape and out.codes.shape == (3, 4, 4) and out.codes.dtype == torch.long
    assert torch.equal(m.encode(x), out.codes)
    torch.testing.assert_close(m.decode(out.codes), out.recon, atol=1e-4, rtol=1e-4)  # forward: the quantized value
    torch.testing.assert_close(out.recon_loss, F.mse_loss(out.recon, x), **TOL)
    torch.testing.assert_close(out.loss, out.recon_loss + out.vq_loss, **TOL)
    assert Q.vqvae_loss(m, x).item() == pytest.approx(out.loss.item())
    assert Q.VQVAEConfig().grid_size == 4 and Q.VQVAEConfig(downsample=2).grid_size == 8


def test_vqvae_every_parameter_learns():
    m = model().train()
    m(randn(4, 3, 16, 16, seed=1)).loss.backward()
    dead = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not dead, dead
    m.zero_grad()
    x = randn(4, 3, 16, 16, seed=1)
    m(x).recon_loss.backward()  # the reconstruction alone reaches the encoder only through the straight-through path
    assert m.encoder[0].weight.grad.abs().max() > 0
    assert m.quantizer.embedding.weight.grad is None or m.quantizer.embedding.weight.grad.abs().max() == 0


# --- GPT on [caption; codes] ---------------------------------------------------------------------------

def test_joint_sequence_by_hand():
    text, codes = torch.tensor([[1, 2, 0], [3, 0, 0]]), torch.tensor([[[0, 4], [2, 1]], [[3, 3], [0, 0]]])
    idx, targets = Q.joint_sequence(text, codes, text_vocab=5, codebook_size=5)
    assert idx.tolist() == [[1, 2, 0, 5, 9, 7], [3, 0, 0, 8, 8, 5]]
    assert targets.tolist() == [[-100, -100, 5, 9, 7, 6], [-100, -100, 8, 8, 5, 5]]
    _, targets = Q.joint_sequence(text, codes.flatten(1), 5, 5, text_loss=True)
    assert targets.tolist() == [[2, 0, 5, 9, 7, 6], [0, 0, 8, 8, 5, 5]]


def test_drop_captions():
    text, null = torch.arange(12).view(4, 3), torch.tensor([0, 0, 0])
    assert torch.equal(Q.drop_captions(text, null, 0.0), text)
    assert torch.equal(Q.drop_captions(text, null, 1.0), torch.zeros(4, 3, dtype=torch.long))
    drop = torch.rand(4, generator=torch.Generator().manual_seed(4)) < 0.5
    got = Q.drop_captions(text, null, 0.5, torch.Generator().manual_seed(4))
    assert torch.equal(got, torch.where(drop[:, None], null, text)) and 0 < int(drop.sum()) < 4


def gpt(V=7 + 5, seed=0):
    torch.manual_seed(seed)
    return scramble_(GPT(GPTConfig(vocab_size=V, block_size=12, n_layer=2, n_head=2, n_embd=16)), seed).eval()


def test_sample_image_codes_equals_an_uncached_loop():
    m, text = gpt(), torch.tensor([[1, 2, 3], [4, 0, 0]])
    got = Q.sample_image_codes(m, text, 6, text_vocab=7, codebook_size=5, generator=torch.Generator().manual_seed(0))
    g, seq = torch.Generator().manual_seed(0), text.clone()
    for _ in range(6):  # the whole sequence through forward each time; image tokens only
        logits = m(seq)[:, -1, 7:12]
        nxt = torch.multinomial(logits.softmax(-1), 1, generator=g)
        seq = torch.cat([seq, nxt + 7], 1)
    assert torch.equal(got, seq[:, 3:] - 7)
    assert got.shape == (2, 6) and 0 <= got.min() and got.max() < 5


class FixedLogits(GPT):
    """Logits that ignore the past: caption tokens far the likeliest; code logits from the caption's first id
    (1: conditional, 0: the null caption), recording every id fed."""

    def forward_cached(self, idx, cache=None):
        self.fed.append(idx.clone())
        first = idx[:, :1] if cache is None else cache
        logits = torch.full((idx.shape[0], idx.shape[1], 12), 50.0)  # text tokens 0..6: +50
        logits[..., 7:] = torch.where(first[:, :, None] == 1, torch.tensor([0.0, 1.0, 1.5, -9.0, -9.0]),
                                      torch.tensor([0.0, 2.0, 0.0, -9.0, -9.0]))
        return logits, first


def test_sample_image_codes_masks_text_and_guides_the_logits():
    m = FixedLogits(GPTConfig(vocab_size=12, block_size=12, n_layer=1, n_head=1, n_embd=4))
    m.fed = []
    text, null = torch.tensor([[1, 2, 3]]), torch.tensor([0, 0, 0])
    cold = dict(text_vocab=7, codebook_size=5, temperature=1e-3, generator=torch.Generator().manual_seed(0))
    assert Q.sample_image_codes(m, text, 3, **cold).tolist() == [[2, 2, 2]]  # cond argmax; text never drawn
    assert [f.tolist() for f in m.fed[1:]] == [[[9]], [[9]]]  # each drawn code fed back as token V_text + k
    m.fed = []
    # s = 0.5: uncond + 0.5 (cond - uncond) = [0, 1.5, 0.75, ...] → code 1; the null caption runs alongside
    assert Q.sample_image_codes(m, text, 2, guidance_scale=0.5, null_ids=null, **cold).tolist() == [[1, 1]]
    assert m.fed[0].tolist() == [[1, 2, 3], [0, 0, 0]] and m.fed[1].tolist() == [[8], [8]]
    assert Q.sample_image_codes(m, text, 2, guidance_scale=0.0, null_ids=null, **cold).tolist() == [[1, 1]]
    assert Q.sample_image_codes(m, text, 2, guidance_scale=3.0, null_ids=null, **cold).tolist() == [[2, 2]]
    top1 = Q.sample_image_codes(m, text, 4, text_vocab=7, codebook_size=5, top_k=1)
    assert top1.tolist() == [[2, 2, 2, 2]]  # top_k=1 keeps only the likeliest code


def test_best_of_k():
    candidates = torch.arange(2 * 3 * 2).view(2, 3, 2)
    scores = torch.tensor([[0.1, 0.9, 0.9], [0.5, -1.0, 0.2]])
    best, index = Q.best_of_k(candidates, scores)
    assert index.tolist() == [1, 0] and best.tolist() == [[2, 3], [6, 7]]


# --- bad input -----------------------------------------------------------------------------------------

def test_bad_input_fails_clearly():
    m = model()
    with pytest.raises(ValueError, match=r"images must be a float tensor \(B, 3, 16, 16\)"):
        m(randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="images must be a float tensor"):
        m.encode(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"codes must be an int64 tensor \(B, 4, 4\)"):
        m.decode(torch.zeros(2, 16, dtype=torch.long))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, K=8\), got min 8, max 8"):
        m.decode(torch.full((1, 4, 4), 8))
    with pytest.raises(ValueError, match="codes must lie"):
        m.decode(torch.full((1, 4, 4), -1))
    with pytest.raises(ValueError, match="not divisible by 2\\^downsample"):
        Q.VQVAEConfig(image_size=20, downsample=3)
    with pytest.raises(ValueError, match="beta"):
        Q.VectorQuantizer(4, 2, beta=-1.0)
    with pytest.raises(ValueError, match=r"z must be a float tensor \(B, D=2, G, G\)"):
        quantizer()(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="threshold"):
        quantizer().restart_dead_codes_(Z, threshold=2.0)
    with pytest.raises(ValueError, match=r"text_ids must lie in \[0, 5\)"):
        Q.joint_sequence(torch.tensor([[5]]), torch.zeros(1, 2, 2, dtype=torch.long), 5, 5)
    with pytest.raises(ValueError, match=r"codes .* must lie in \[0, 5\)"):
        Q.joint_sequence(torch.tensor([[1]]), torch.full((1, 2, 2), 5), 5, 5)
    with pytest.raises(ValueError, match="2 captions but 1 images"):
        Q.joint_sequence(torch.tensor([[1], [2]]), torch.zeros(1, 2, 2, dtype=torch.long), 5, 5)
    g = gpt()
    with pytest.raises(ValueError, match="needs null_ids"):
        Q.sample_image_codes(g, torch.tensor([[1, 2]]), 3, 7, 5, guidance_scale=2.0)
    with pytest.raises(ValueError, match="do not fit the context window"):
        Q.sample_image_codes(g, torch.tensor([[1, 2]]), 20, 7, 5)
    with pytest.raises(ValueError, match="do not fit the model's vocab_size"):
        Q.sample_image_codes(g, torch.tensor([[1, 2]]), 3, 7, 6)
    with pytest.raises(ValueError, match="scores must be"):
        Q.best_of_k(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="candidates must be"):
        Q.best_of_k(torch.zeros(2, 4), torch.zeros(2, 3))


# --- what a mutation run found untested (issue 31) --------------------------------------------------------

def test_codebook_starts_uniform_in_plus_minus_one_over_K_with_the_papers_defaults():
    torch.manual_seed(0)
    q = Q.VectorQuantizer(64, 8)
    w = q.embedding.weight
    assert -1 / 64 <= w.min() < -0.9 / 64 and 0.9 / 64 < w.max() <= 1 / 64  # U(-1/K, 1/K), both ends reached
    assert q.beta == 0.25 and q.decay == 0.99  # β of van den Oord et al. (2017), section 3.2
    assert Q.VQVAEConfig().beta == 0.25


def test_quantizer_arguments_at_their_bounds():
    assert Q.VectorQuantizer(4, 2, beta=0.0).beta == 0.0  # no commitment term is allowed
    assert Q.VectorQuantizer(4, 2, decay=0.0).decay == 0.0  # usage = this batch's shares
    for decay in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=rf"^VectorQuantizer: decay must be in \[0, 1\), got {decay}"):
            Q.VectorQuantizer(4, 2, decay=decay)
    for name, args in (("codebook_size", (0, 2)), ("code_dim", (4, 0)), ("codebook_size", (True, 2)),
                       ("code_dim", (4, 1.5))):
        with pytest.raises(ValueError, match=rf"^VectorQuantizer: {name} must be a positive int, got {args[name == 'code_dim']}"):
            Q.VectorQuantizer(*args)


@pytest.mark.parametrize("name", ["image_size", "channels", "hidden", "downsample", "codebook_size", "code_dim"])
def test_vqvae_config_checks_every_size(name):
    with pytest.raises(ValueError, match=rf"^VQVAEConfig: {name} must be a positive int, got 0$"):
        Q.VQVAEConfig(**{name: 0})


def test_vqvae_config_res_blocks_may_be_zero_not_negative():
    assert Q.VQVAEConfig(res_blocks=0).res_blocks == 0
    for bad in (-1, True, 0.5):
        with pytest.raises(ValueError, match=rf"^VQVAEConfig: res_blocks must be an int ≥ 0, got {bad}"):
            Q.VQVAEConfig(res_blocks=bad)


def test_resblock_is_the_papers_formula():
    block = scramble_(Q.ResBlock(4), 0)
    x = randn(2, 4, 5, 5, seed=1)
    expected = x + F.conv2d(F.relu(F.conv2d(F.relu(x), block.conv1.weight, block.conv1.bias, padding=1)),
                            block.conv2.weight, block.conv2.bias)
    torch.testing.assert_close(block(x), expected, **TOL)


def test_vqvae_encoder_and_decoder_by_hand():
    """The architecture of the docstring, written out: stride-2 4x4 convolutions with ReLU, residual blocks,
    ReLU, 1x1 to D; the decoder its mirror. The config's β, decay and res_blocks reach the model."""
    cfg = Q.VQVAEConfig(image_size=16, hidden=8, downsample=2, codebook_size=8, code_dim=4, res_blocks=2,
                        beta=0.5, decay=0.9)
    m = scramble_(Q.VQVAE(cfg), 3).eval()
    assert m.quantizer.beta == 0.5 and m.quantizer.decay == 0.9
    enc_blocks = [b for b in m.encoder if isinstance(b, Q.ResBlock)]
    dec_blocks = [b for b in m.decoder if isinstance(b, Q.ResBlock)]
    assert len(enc_blocks) == 2 and len(dec_blocks) == 2
    convs = [c for c in m.encoder if isinstance(c, torch.nn.Conv2d)]  # two stride-2, then the 1x1
    x = randn(2, 3, 16, 16, seed=4)
    h = x
    for conv in convs[:2]:
        h = F.relu(F.conv2d(h, conv.weight, conv.bias, stride=2, padding=1))
    for b in enc_blocks:
        h = b(h)
    z = F.conv2d(F.relu(h), convs[2].weight, convs[2].bias)
    torch.testing.assert_close(m.encode_continuous(x), z, **TOL)
    first = m.decoder[0]
    ups = [c for c in m.decoder if isinstance(c, torch.nn.ConvTranspose2d)]
    codes = m.encode(x)
    h = F.conv2d(m.quantizer.lookup(codes), first.weight, first.bias, padding=1)
    for b in dec_blocks:
        h = b(h)
    for up in ups:
        h = F.conv_transpose2d(F.relu(h), up.weight, up.bias, stride=2, padding=1)
    torch.testing.assert_close(m.decode(codes), h, **TOL)
    assert not [b for b in Q.VQVAE(Q.VQVAEConfig(res_blocks=0)).modules() if isinstance(b, Q.ResBlock)]


def test_vqvae_forward_reports_the_quantizers_perplexity_and_use():
    m, x = model(), randn(3, 3, 16, 16, seed=1)
    out, q = m(x), m.quantizer(m.encode_continuous(x))
    assert out.perplexity.item() == pytest.approx(q.perplexity.item()) and out.used.item() == pytest.approx(q.used.item())
    assert 1.0 <= out.perplexity.item() <= 8 and 0 < out.used.item() <= 1


def test_quantizer_in_float64_and_on_a_single_vector():
    q = quantizer().double().eval()
    out = q(Z.double())
    assert out.perplexity.dtype == torch.float64 and out.used.dtype == torch.float64
    q = quantizer()
    q.decay = 0.5
    one = torch.tensor([0.9, 0.1]).view(1, 2, 1, 1)  # one image, a 1x1 grid: one vector, code 1
    out = q.train()(one)
    assert out.codes.tolist() == [[[1]]] and out.perplexity.item() == pytest.approx(1.0)
    torch.testing.assert_close(q.usage, 0.5 * torch.full((4,), 0.25) + 0.5 * torch.tensor([0.0, 1.0, 0.0, 0.0]))


def test_nearest_is_per_vector_whatever_else_is_in_the_batch():
    q = Q.VectorQuantizer(16, 3)
    z = randn(40, 3, seed=5)
    alone = torch.stack([q.nearest(v[None])[0] for v in z])
    with_outlier = q.nearest(torch.cat([z, torch.full((1, 3), 1e4)]))[:40]  # one far vector beside them
    assert torch.equal(alone, with_outlier) and torch.equal(alone, torch.cdist(z, q.embedding.weight).argmin(1))


def test_codes_at_both_ends_of_the_codebook_are_valid():
    q, m = quantizer(), model()
    torch.testing.assert_close(q.lookup(torch.tensor([[[0, 3]]])), torch.tensor([[[[0.0, 5.0]], [[0.0, 5.0]]]]))
    codes = torch.tensor([[0, 7, 0, 7]] * 4).view(1, 4, 4)
    assert m.decode(codes).shape == (1, 3, 16, 16)


@pytest.mark.parametrize("bad, got", [
    ([[[0]]], "got list"),
    (torch.zeros(1, 1, 1, dtype=torch.int32), r"got shape \(1, 1, 1\), dtype torch.int32"),
    (torch.zeros(1, 2, dtype=torch.long), r"got shape \(1, 2\), dtype torch.int64"),
])
def test_lookup_names_what_it_got(bad, got):
    with pytest.raises(ValueError, match=rf"^lookup: codes must be an int64 tensor \(B, G, G\), {got}"):
        quantizer().lookup(bad)


def test_lookup_refuses_codes_outside_the_codebook():
    for codes, lo, hi in (([[[-1, 0]]], -1, 0), ([[[0, 4]]], 0, 4)):
        with pytest.raises(ValueError, match=rf"^lookup: codes must lie in \[0, K=4\), got min {lo}, max {hi}"):
            quantizer().lookup(torch.tensor(codes))


@pytest.mark.parametrize("bad, got", [
    ([[[0]]], "got list"),
    (torch.zeros(1, 4, 4, dtype=torch.int32), r"got shape \(1, 4, 4\), dtype torch.int32"),
    (torch.zeros(1, 3, 3, dtype=torch.long), r"got shape \(1, 3, 3\), dtype torch.int64"),
])
def test_decode_names_what_it_got(bad, got):
    with pytest.raises(ValueError, match=rf"^decode: codes must be an int64 tensor \(B, 4, 4\), {got}"):
        model().decode(bad)


def test_decode_refuses_codes_outside_the_codebook_itself():
    for fill, lo, hi in ((-1, -1, 0), (8, 0, 8)):
        codes = torch.zeros(1, 4, 4, dtype=torch.long)
        codes[0, 0, 0] = fill
        with pytest.raises(ValueError, match=rf"^decode: codes must lie in \[0, K=8\), got min {lo}, max {hi}"):
            model().decode(codes)


@pytest.mark.parametrize("bad, got", [
    ([0.0], "got list"),
    (torch.zeros(2, 3, 32, 32), r"got shape \(2, 3, 32, 32\), dtype torch.float32"),
])
def test_encode_names_what_it_got(bad, got):
    with pytest.raises(ValueError, match=rf"^encode: images must be a float tensor \(B, 3, 16, 16\) .*{got}"):
        model().encode_continuous(bad)


@pytest.mark.parametrize("bad, got", [
    ([0.0], "got list"),
    (torch.zeros(1, 2, 2, 2, dtype=torch.long), r"got shape \(1, 2, 2, 2\), dtype torch.int64"),
    (torch.zeros(2, 2, 2), r"got shape \(2, 2, 2\), dtype torch.float32"),
])
def test_quantizer_names_what_it_got(bad, got):
    with pytest.raises(ValueError, match=rf"^VectorQuantizer: z must be a float tensor \(B, D=2, G, G\), {got}"):
        quantizer()(bad)


@pytest.mark.parametrize("text, got", [
    ([[1]], "got list"),
    (torch.tensor([[1]], dtype=torch.int32), r"got shape \(1, 1\), dtype torch.int32"),
    (torch.tensor([1]), r"got shape \(1,\), dtype torch.int64"),
    (torch.zeros(1, 0, dtype=torch.long), r"got shape \(1, 0\), dtype torch.int64"),
])
def test_joint_sequence_names_what_it_got(text, got):
    codes = torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=rf"^joint_sequence: text_ids must be a non-empty int64 tensor \(B, length\), {got}"):
        Q.joint_sequence(text, codes, 5, 5)
    with pytest.raises(ValueError, match=rf"^joint_sequence: codes \(B, G, G\) or \(B, N\) must be a non-empty int64 tensor \(B, length\), {got}"):
        Q.joint_sequence(torch.tensor([[1]]), text, 5, 5)


def test_joint_sequence_checks_both_vocabularies():
    text, codes = torch.tensor([[1]]), torch.zeros(1, 2, 2, dtype=torch.long)
    for name, args in (("text_vocab", (0, 5)), ("codebook_size", (5, 0))):
        with pytest.raises(ValueError, match=rf"^joint_sequence: {name} must be a positive int, got 0"):
            Q.joint_sequence(text, codes, *args)


def test_drop_captions_checks_its_arguments():
    text, null = torch.arange(12).view(4, 3), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^drop_captions: p is a probability in \[0, 1\], got 1.5"):
        Q.drop_captions(text, null, 1.5)
    for t, n in ((text, torch.zeros(3, 1, dtype=torch.long)), ([[1, 2, 3]], null), (torch.arange(3), null),
                 (text, torch.zeros(5, dtype=torch.long)), (text, [0, 0, 0])):
        with pytest.raises(ValueError, match=r"^drop_captions: text_ids must be \(B, T_c\) and null_ids \(T_c,\)"):
            Q.drop_captions(t, n, 0.5)


def test_drop_captions_keeps_the_captions_dtype_and_device():
    """The generator draws on the CPU; the captions may live elsewhere (the meta device stands in for a GPU)."""
    text = torch.arange(12, dtype=torch.int32).view(4, 3)
    out = Q.drop_captions(text, torch.zeros(3, dtype=torch.long), 1.0)
    assert out.dtype == torch.int32 and torch.equal(out, torch.zeros(4, 3, dtype=torch.int32))
    out = Q.drop_captions(torch.zeros(4, 3, dtype=torch.long, device="meta"), torch.zeros(3, dtype=torch.long), 0.5)
    assert out.device.type == "meta" and out.shape == (4, 3)


def test_best_of_one_is_the_only_sample():
    best, index = Q.best_of_k(torch.tensor([[7], [8]]), torch.tensor([[0.3], [-0.2]]))
    assert best.tolist() == [7, 8] and index.tolist() == [0, 0]


# --- what the second mutation run found untested: sample_image_codes' checks, restart_dead_codes_ ---------

TEXT = torch.tensor([[1, 2, 3], [4, 0, 0]])  # T_c = 3, ids in [0, V_text = 7); gpt(): vocab 12 = 7 + 5, block 12


@pytest.mark.parametrize("name", ["n_codes", "text_vocab", "codebook_size"])
def test_sample_image_codes_checks_every_size(name):
    sizes = dict(n_codes=2, text_vocab=7, codebook_size=5)
    sizes[name] = 0
    with pytest.raises(ValueError, match=rf"^sample_image_codes: {name} must be a positive int, got 0$"):
        Q.sample_image_codes(gpt(), TEXT, **sizes)


@pytest.mark.parametrize("text, got", [
    ([[1, 2]], "must be a non-empty int64 tensor \\(B, length\\), got list"),
    (torch.tensor([[1, 2]], dtype=torch.int32), r"must be a non-empty int64 tensor \(B, length\), got shape \(1, 2\), dtype torch.int32"),
    (torch.tensor([[1, 7]]), r"must lie in \[0, 7\), got min 1, max 7"),
])
def test_sample_image_codes_names_bad_text_ids(text, got):
    with pytest.raises(ValueError, match=rf"^sample_image_codes: text_ids {got}"):
        Q.sample_image_codes(gpt(), text, 2, 7, 5)


def test_sample_image_codes_context_window_bound_is_exact():
    """The model reads the caption and every code but the last: T_c + n_codes - 1 positions."""
    m = gpt()
    codes = Q.sample_image_codes(m, TEXT, 10, 7, 5, generator=torch.Generator().manual_seed(0))  # 3 + 10 - 1 = 12
    assert codes.shape == (2, 10) and 0 <= codes.min() and codes.max() < 5
    with pytest.raises(ValueError, match=r"^sample_image_codes: T_c \+ n_codes - 1 = 13 positions do not fit the "
                                         r"context window block_size=12"):
        Q.sample_image_codes(m, TEXT, 11, 7, 5)


def test_sample_image_codes_temperature_and_top_k_bounds():
    m, g = gpt(), lambda: torch.Generator().manual_seed(1)
    for t in (0.0, -1.0):
        with pytest.raises(ValueError, match=rf"^sample_image_codes: temperature must be > 0, got {t}"):
            Q.sample_image_codes(m, TEXT, 2, 7, 5, temperature=t)
    cold = Q.sample_image_codes(m, TEXT, 3, 7, 5, temperature=1e-6, generator=g())  # tiny but positive: argmax
    seq = TEXT.clone()
    for _ in range(3):  # greedy over the image tokens, by the uncached forward
        seq = torch.cat([seq, m(seq)[:, -1, 7:12].argmax(-1, keepdim=True) + 7], 1)
    assert torch.equal(cold, seq[:, 3:] - 7)
    # top_k = K keeps every code: the same draws as no filter; top_k = 1 is the argmax
    assert torch.equal(Q.sample_image_codes(m, TEXT, 4, 7, 5, top_k=5, generator=g()),
                       Q.sample_image_codes(m, TEXT, 4, 7, 5, generator=g()))
    assert torch.equal(Q.sample_image_codes(m, TEXT, 3, 7, 5, top_k=1, generator=g()), cold)
    for bad in (0, 6, 2.0, -1):
        with pytest.raises(ValueError, match=rf"^sample_image_codes: top_k must be an int in \[1, K=5\] or None, "
                                             rf"got {bad!r}"):
            Q.sample_image_codes(m, TEXT, 2, 7, 5, top_k=bad)


@pytest.mark.parametrize("null", [None, [0, 0, 0], torch.zeros(4, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long),
                                  torch.zeros(2, dtype=torch.long)])
def test_sample_image_codes_guidance_needs_a_null_caption_of_the_captions_length(null):
    with pytest.raises(ValueError, match=r"^sample_image_codes: guidance_scale=2.0 needs null_ids, the null caption "
                                         r"\(T_c=3,\)"):
        Q.sample_image_codes(gpt(), TEXT, 2, 7, 5, guidance_scale=2.0, null_ids=null)


def test_sample_image_codes_names_bad_null_ids():
    """null_ids must be int64 like the captions (an int32 null caption is refused, not converted) and in range."""
    m = gpt()
    with pytest.raises(ValueError, match=r"^sample_image_codes: null_ids must lie in \[0, 7\), got min 0, max 7"):
        Q.sample_image_codes(m, TEXT, 2, 7, 5, guidance_scale=2.0, null_ids=torch.tensor([0, 0, 7]))
    with pytest.raises(ValueError, match=r"^sample_image_codes: null_ids must be a non-empty int64 tensor \(B, length\), "
                                         r"got shape \(1, 3\), dtype torch.int32"):
        Q.sample_image_codes(m, TEXT, 2, 7, 5, guidance_scale=2.0, null_ids=torch.zeros(3, dtype=torch.int32))
    # guidance_scale = 1 is the plain conditional model: null_ids is not needed, and ignored if given
    g = lambda: torch.Generator().manual_seed(2)
    assert torch.equal(Q.sample_image_codes(m, TEXT, 3, 7, 5, guidance_scale=1.0, null_ids=None, generator=g()),
                       Q.sample_image_codes(m, TEXT, 3, 7, 5, null_ids=torch.tensor([9, 9]), generator=g()))


def rows(z):
    """z (B, D, H, W) → its B·H·W D-vectors (B·H·W, D), by permute (not einops)."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def is_one_of(row, vectors):
    return bool((vectors == row).all(dim=1).any())


def test_restart_threshold_bounds_and_a_share_equal_to_it_is_alive():
    q = quantizer()  # usage starts at 1/4 for each of the 4 codes
    assert q.restart_dead_codes_(Z, threshold=0.0) == 0  # no share is below 0
    assert q.restart_dead_codes_(Z, threshold=1.0, generator=torch.Generator().manual_seed(0)) == 4  # all below 1
    for bad in (-1e-9, 1.0 + 1e-9, -0.5):
        with pytest.raises(ValueError, match=rf"^restart_dead_codes_: threshold is a share of the assignments in "
                                             rf"\[0, 1\], got {bad}"):
            q.restart_dead_codes_(Z, threshold=bad)
    q = quantizer()
    before = q.embedding.weight.detach().clone()
    q.usage.copy_(torch.tensor([0.25, 0.25, 0.5, 0.0]))
    assert q.restart_dead_codes_(Z, threshold=0.25, generator=torch.Generator().manual_seed(0)) == 1  # "below": < not ≤
    assert torch.equal(q.embedding.weight.detach()[:3], before[:3])
    assert is_one_of(q.embedding.weight.detach()[3], rows(Z))


def test_restart_fewer_vectors_than_dead_codes_draws_with_replacement():
    q = Q.VectorQuantizer(8, 2)
    q.usage.zero_()
    z = randn(1, 2, 1, 3, seed=6)  # M = 3 encoder outputs for n = 8 dead codes
    assert q.restart_dead_codes_(z, threshold=0.01, generator=torch.Generator().manual_seed(0)) == 8
    w = q.embedding.weight.detach()
    assert all(is_one_of(w[k], rows(z)) for k in range(8))
    torch.testing.assert_close(q.usage, torch.full((8,), 1 / 8))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_restart_as_many_vectors_as_dead_codes_uses_each_once(seed):
    """M == n: without replacement, the restarted codes are the encoder outputs, each exactly once."""
    q = Q.VectorQuantizer(8, 2)
    q.usage.zero_()
    z = randn(2, 2, 2, 2, seed=7)  # M = 2·2·2 = 8
    assert q.restart_dead_codes_(z, threshold=0.01, generator=torch.Generator().manual_seed(seed)) == 8
    got = sorted(map(tuple, q.embedding.weight.detach().tolist()))
    assert got == sorted(map(tuple, rows(z).tolist()))


@pytest.mark.parametrize("M", [2, 18])  # fewer vectors than the 6 dead codes (randint), and more (randperm)
def test_restart_is_reproducible_with_a_generator_whatever_the_global_rng(M):
    z = randn(1, 2, 1, M, seed=8)

    def restart(gen_seed, global_seed):
        q = Q.VectorQuantizer(6, 2)
        q.usage.zero_()
        torch.manual_seed(global_seed)
        q.restart_dead_codes_(z, threshold=0.01, generator=torch.Generator().manual_seed(gen_seed))
        return q.embedding.weight.detach().clone()

    a = restart(3, global_seed=10)
    assert torch.equal(a, restart(3, global_seed=11))
    assert not torch.equal(a, restart(4, global_seed=10))


@pytest.mark.parametrize("z_dtype, q_dtype", [(torch.float64, torch.float32), (torch.float32, torch.float64)])
def test_restart_writes_encoder_vectors_in_the_codebooks_dtype(z_dtype, q_dtype):
    q = Q.VectorQuantizer(6, 3).to(q_dtype)
    q.usage.copy_(torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0, 0.0], dtype=q_dtype))
    before = q.embedding.weight.detach().clone()
    z = randn(2, 3, 2, 2, seed=9).to(z_dtype)  # 8 vectors for 4 dead codes
    assert q.restart_dead_codes_(z, threshold=0.1, generator=torch.Generator().manual_seed(0)) == 4
    w = q.embedding.weight.detach()
    assert w.dtype == q_dtype
    vectors = rows(z).to(q_dtype)
    for k in (0, 2, 4, 5):
        assert is_one_of(w[k], vectors)
    assert torch.equal(w[[1, 3]], before[[1, 3]])


@pytest.mark.parametrize("bad, got", [
    ([0.0], "got list"),
    (torch.zeros(1, 3, 2, 2), r"got shape \(1, 3, 2, 2\), dtype torch.float32"),
    (torch.zeros(1, 2, 2, 2, dtype=torch.long), r"got shape \(1, 2, 2, 2\), dtype torch.int64"),
])
def test_restart_names_what_it_got(bad, got):
    with pytest.raises(ValueError, match=rf"^restart_dead_codes_: z must be a float tensor \(B, D=2, G, G\), {got}"):
        quantizer().restart_dead_codes_(bad)
