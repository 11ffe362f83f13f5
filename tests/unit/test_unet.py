import pytest
import torch

from landcover_plugin.core.model.unet import (
    DepthToSpaceUp,
    UNet,
    fused_for_inference,
    with_depth_to_space,
    with_float_layers,
)


@pytest.mark.parametrize("h,w", [(64, 64), (37, 53), (1, 1), (5, 130), (17, 16)])
@pytest.mark.parametrize("depth", [1, 3])
def test_any_input_size_gives_same_size_output(h, w, depth):
    net = UNet(4, 6, base_width=4, depth=depth).eval()
    with torch.no_grad():
        y = net(torch.randn(2, 4, h, w))
    assert y.shape == (2, 6, h, w)
    assert torch.isfinite(y).all()


def test_width_and_depth_change_the_network():
    small = sum(p.numel() for p in UNet(3, 5, 8, 2).parameters())
    wide = sum(p.numel() for p in UNet(3, 5, 16, 2).parameters())
    deep = sum(p.numel() for p in UNet(3, 5, 8, 3).parameters())
    assert wide > 3 * small and deep > 3 * small


def test_channels_last_matches_contiguous():
    net = UNet(3, 5, 8, 2).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        a = net(x)
        b = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_fused_batchnorm_gives_the_same_outputs_and_leaves_the_original():
    net = UNet(3, 5, 8, 2)
    for m in net.modules():  # non-trivial statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    _answers_alike_without(net.eval(), fused_for_inference, torch.nn.BatchNorm2d, torch.randn(2, 3, 37, 45))


def _answers_alike_without(net, rewrite, kind, x):
    """rewrite(net) holds no `kind` module, answers x as net does, and net keeps its own."""
    rewritten = rewrite(net)
    assert not any(isinstance(m, kind) for m in rewritten.modules())
    assert any(isinstance(m, kind) for m in net.modules())
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), net(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cin,cout,bias", [(8, 4, True), (6, 3, False), (1, 1, True)])
def test_depth_to_space_upsampling_is_the_transposed_convolution(cin, cout, bias):
    up = torch.nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=bias)
    x = torch.randn(2, cin, 5, 7)
    with torch.no_grad():
        want = up(x)
        got = DepthToSpaceUp(up)(x)
        got_last = DepthToSpaceUp(up).to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last))
    assert got.shape == (2, cout, 10, 14)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_last, want, atol=1e-5, rtol=1e-5)


def test_a_network_with_depth_to_space_upsampling_answers_as_before_and_others_are_refused():
    net = UNet(3, 5, 8, 3).eval()
    _answers_alike_without(net, with_depth_to_space, torch.nn.ConvTranspose2d, torch.randn(1, 3, 40, 56))
    with pytest.raises(ValueError, match="stride 2"):
        DepthToSpaceUp(torch.nn.ConvTranspose2d(4, 4, 3, stride=2))


def test_float_layers_run_in_fp32_under_autocast_the_rest_in_bf16_and_the_original_is_kept():
    net = UNet(3, 5, 8, 3).eval()
    mixed = with_float_layers(net, ("downs.1", "downs.7"))  # downs.7: absent in a shallower network, skipped
    seen = {}
    for name in ("downs.0", "downs.1", "downs.2"):
        mixed.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.dtype))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(mixed(x), net(x))  # outside autocast nothing changes
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed(x)
    assert seen == {"downs.0": torch.bfloat16, "downs.1": torch.float32, "downs.2": torch.bfloat16}
    assert type(net.downs[1]).__name__ == "Down"
