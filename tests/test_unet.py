"""U-Net components: shapes, identity at initialisation, channels_last parity, null class, patching."""

import pytest
import torch

from latentdiff.nn import UNet, UNetConfig, count_parameters
from latentdiff.nn.attention import SelfAttention2d
from latentdiff.nn.layers import timestep_embedding


def small(**kw):
    base = dict(image_size=16, in_channels=3, channels=16, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(8,), num_heads=2, dropout=0.0, norm_groups=8)
    return UNetConfig(**{**base, **kw})


def randomise(net):
    torch.manual_seed(0)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return net.eval()


@pytest.mark.parametrize("patch_size", [1, 2])
@pytest.mark.parametrize("learned_variance", [False, True])
def test_output_shape(patch_size, learned_variance):
    net = UNet(small(patch_size=patch_size), learned_variance=learned_variance)
    out = net(torch.randn(2, 3, 16, 16), torch.tensor([3.0, 500.0]))
    assert out.shape == (2, 6 if learned_variance else 3, 16, 16)


def test_zero_initialised_output():
    """conv_out starts at zero (ADM), so an untrained eps-model predicts eps = 0."""
    net = UNet(small())
    assert torch.count_nonzero(net(torch.randn(2, 3, 16, 16), torch.tensor([1.0, 2.0]))) == 0


def test_attention_block_is_identity_at_init_and_matches_manual_softmax():
    attn = SelfAttention2d(8, num_heads=2, groups=4)
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(attn(x), x)
    torch.nn.init.normal_(attn.proj.weight)
    h = attn.qkv(attn.norm(x)).reshape(2, 3, 2, 4, 16)
    q, k, v = h[:, 0], h[:, 1], h[:, 2]  # (B, heads, d, HW)
    w = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) / 2.0, dim=-1)
    manual = torch.einsum("bhij,bhdj->bhdi", w, v).reshape(2, 8, 4, 4)
    torch.testing.assert_close(attn(x), x + attn.proj(manual), rtol=1e-4, atol=1e-5)


def test_channels_last_matches_contiguous():
    net = randomise(UNet(small(num_classes=3)))
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([10.0, 900.0]), torch.tensor([0, 2])
    with torch.no_grad():
        ref = net(x, t, y)
        fast = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last), t, y)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


def test_missing_label_is_the_null_class():
    net = randomise(UNet(small(num_classes=3)))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10.0, 900.0])
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), net(x, t, torch.tensor([3, 3])))
        assert not torch.allclose(net(x, t), net(x, t, torch.tensor([0, 0])))


def test_timestep_embedding_closed_form():
    emb = timestep_embedding(torch.tensor([0.0, 7.0]), 6)
    freqs = torch.tensor([1.0, 10000 ** (-1 / 3), 10000 ** (-2 / 3)])
    expected = torch.cat([torch.cos(7.0 * freqs), torch.sin(7.0 * freqs)])
    torch.testing.assert_close(emb[1], expected)
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1, 1, 0, 0, 0]))


def test_parameter_count_grows_with_width():
    assert count_parameters(UNet(small(channels=32))) > 3 * count_parameters(UNet(small(channels=16)))


def test_bad_patch_size_is_an_error():
    with pytest.raises(ValueError, match="patch_size"):
        UNet(small(patch_size=3))


def test_cross_attention_ignores_masked_tokens_and_starts_as_identity():
    from latentdiff.nn.attention import CrossAttention2d

    torch.manual_seed(0)
    layer = CrossAttention2d(16, 12, num_heads=2, groups=4)
    x, context = torch.randn(2, 16, 4, 4), torch.randn(2, 5, 12)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    torch.testing.assert_close(layer(x, context, mask), x)  # zero-initialised output projection
    torch.nn.init.normal_(layer.proj.weight)
    changed = context.clone()
    changed[0, 3:] = 100.0  # padding of sample 0
    torch.testing.assert_close(layer(x, changed, mask), layer(x, context, mask))
    changed[0, 0] = 100.0   # a real token
    assert not torch.allclose(layer(x, changed, mask)[0], layer(x, context, mask)[0])


def test_text_conditioned_unet_depends_on_real_tokens_only():
    cfg = UNetConfig(image_size=8, in_channels=2, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(4,), norm_groups=4, dropout=0.0, context_dim=6, pooled_dim=6)
    torch.manual_seed(0)
    net = UNet(cfg).eval()
    for p in net.parameters():  # leave the zero-initialised start so the text can matter
        torch.nn.init.normal_(p, std=0.2)
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([10.0, 500.0])
    text, mask = torch.randn(2, 4, 6), torch.tensor([[True, True, False, False], [True] * 4])
    pooled = torch.randn(2, 6)
    out = net(x, t, text=text, text_mask=mask, pooled=pooled)
    padded = text.clone()
    padded[0, 2:] = 50.0
    torch.testing.assert_close(net(x, t, text=padded, text_mask=mask, pooled=pooled), out)
    other = text.clone()
    other[0, 0] = 3.0
    assert not torch.allclose(net(x, t, text=other, text_mask=mask, pooled=pooled)[0], out[0])
    # no text at all is the learned null token alone, the same as a sample whose tokens are all masked
    torch.testing.assert_close(net(x, t), net(x, t, text=text, text_mask=torch.zeros_like(mask), pooled=None))


def test_position_embedding_is_the_sincos_grid_added_after_conv_in_and_not_saved():
    """position_embedding adds sincos_2d(C, H/p, W/p) (row-major cells) to conv_in's output, the first
    skip; the weights (state_dict) are those of the same U-Net without it; bad widths are refused."""
    from latentdiff.nn.layers import sincos_2d

    plain, placed = (randomise(UNet(small(patch_size=2, position_embedding=on))) for on in (False, True))
    assert plain.state_dict().keys() == placed.state_dict().keys()
    placed.load_state_dict(plain.state_dict())
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3.0, 500.0])
    first = lambda net: net.encode(x, t)[0][0]  # noqa: E731
    grid = sincos_2d(16, 8, 8)                     # (64 cells, 16)
    assert torch.allclose(first(placed) - first(plain), grid.T.reshape(1, 16, 8, 8).expand(2, -1, -1, -1), atol=1e-6)
    assert not torch.allclose(placed(x, t), plain(x, t))
    with pytest.raises(ValueError, match="divisible by 4"):
        small(channels=18, norm_groups=2, position_embedding=True)
