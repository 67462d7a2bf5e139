import numpy as np
import pytest
import torch

from napari_unet.core.config import ClassInfo, ModelConfig, UNetConfig
from napari_unet.core.model import UNet, conv_flops, fuse_batchnorm


@pytest.mark.parametrize("shape", [(2, 1, 32, 48), (1, 1, 16, 16), (3, 1, 64, 80)])
def test_unet_output_shape_matches_input(shape):
    net = UNet(UNetConfig(in_channels=1, num_classes=3, depth=2, base_channels=4))
    out = net(torch.zeros(shape))
    assert out.shape == (shape[0], 3, *shape[2:])


def test_unet_rgb_and_depth_configurable():
    config = UNetConfig(in_channels=3, num_classes=4, depth=3, base_channels=8, norm="group")
    net = UNet(config)
    assert net(torch.zeros(1, 3, 24, 40)).shape == (1, 4, 24, 40)
    assert config.widths() == [8, 16, 32, 64]
    assert len(net.encoder.blocks) == 4 and len(net.decoder.blocks) == 3


@pytest.mark.parametrize("size", [(33, 34), (17, 32)])
def test_unet_refuses_sizes_not_divisible(size):
    net = UNet(UNetConfig(depth=2, base_channels=4))
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.zeros(1, 1, *size))


def test_architecture_is_ronneberger_unet():
    net = UNet(UNetConfig(depth=2, base_channels=4, norm="none"))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.kernel_size in ((3, 3), (1, 1)) for c in convs)
    assert net.head.kernel_size == (1, 1)
    ups = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(ups) == 2 and all(u.kernel_size == (2, 2) and u.stride == (2, 2) for u in ups)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in net.modules()) == 1  # shared 2x2 pool
    assert net.encoder.pool.kernel_size == 2


def test_fused_batchnorm_equals_eval_model():
    torch.manual_seed(0)
    net = UNet(UNetConfig(depth=2, base_channels=4))
    net.train()
    for _ in range(3):  # give the running statistics non-trivial values
        net(torch.randn(4, 1, 32, 32) * 3 + 1)
    net.eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = net(x)
        fused = fuse_batchnorm(net)(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fuse_batchnorm(net).modules())
    torch.testing.assert_close(fused, expected, atol=1e-4, rtol=1e-4)


def test_add_classes_keeps_old_predictions():
    torch.manual_seed(0)
    net = UNet(UNetConfig(depth=1, base_channels=4)).eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        before = net(x).argmax(1)
        net.add_classes(1)
        after = net(x)
    assert after.shape[1] == 4 and net.config.num_classes == 4
    assert torch.equal(after.argmax(1), before)


def test_config_round_trip_and_validation():
    config = ModelConfig(name="m", architecture=UNetConfig(depth=3), provenance={"seed": 1})
    again = ModelConfig.from_dict(config.to_dict())
    assert again == config
    assert config.classes[1].name == "tumor" and config.classes[2].name == "nerve"
    with pytest.raises(ValueError, match="classes named"):
        ModelConfig(name="bad", classes=(ClassInfo(0, "bg", "#000000"),))
    with pytest.raises(ValueError, match="newer"):
        ModelConfig.from_dict({**config.to_dict(), "format_version": 99})
    assert np.allclose(ClassInfo(1, "t", "#ff000080").rgba(), (1, 0, 0, 128 / 255))


def test_flop_count_matches_direct_count():
    config = UNetConfig(depth=2, base_channels=4, norm="none")
    net = UNet(config)
    macs = 0
    hooks = []

    def count(module, inputs, output):
        nonlocal macs
        if isinstance(module, torch.nn.ConvTranspose2d):
            macs += inputs[0].numel() * module.out_channels * 4
        else:
            k = module.kernel_size[0] * module.kernel_size[1]
            macs += output.numel() * module.in_channels * k

    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            hooks.append(m.register_forward_hook(count))
    net(torch.zeros(1, 1, 32, 32))
    assert conv_flops(config, 32, 32) == pytest.approx(2 * macs, rel=1e-6)


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_widen_keeps_the_function_and_widens_every_level(norm):
    from napari_unet.core.model import widen

    torch.manual_seed(0)
    net = UNet(UNetConfig(depth=2, base_channels=4, norm=norm))
    net.train()
    for _ in range(3):  # non-trivial batch-norm statistics and affine terms
        net(torch.randn(4, 1, 32, 32) * 2 + 1)
    for p in net.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    net.eval()
    wide = widen(net, 10).eval()
    assert wide.config.widths() == [10, 20, 40] and wide.config.norm == norm
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wide(x), net(x), atol=1e-5, rtol=1e-4)
    # the new channels are live: their incoming weights are not all zero, and
    # one training step changes the output
    assert wide.encoder.blocks[0][0].weight[4:].abs().sum() > 0
    wide.train()
    loss = torch.nn.functional.cross_entropy(wide(x), torch.randint(0, 3, (2, 32, 32)))
    loss.backward()
    assert wide.head.weight.grad[:, 4:].abs().sum() > 0


def test_widen_refuses_a_narrower_target_and_group_norm():
    from napari_unet.core.model import widen

    with pytest.raises(ValueError, match="narrow"):
        widen(UNet(UNetConfig(depth=2, base_channels=8)), 4)
    with pytest.raises(ValueError, match="group-norm"):
        widen(UNet(UNetConfig(depth=2, base_channels=8, norm="group")), 16)


def test_instance_norm_is_torchs_instance_norm_in_both_memory_layouts():
    """The model's instance norm (a group norm of one channel per group, faster
    on channels-last CPU tensors) gives torch's instance-norm values and
    gradients, and loads the same parameters."""
    from torch import nn

    from napari_unet.core.model import InstanceNorm

    torch.manual_seed(0)
    reference = nn.InstanceNorm2d(6, affine=True)
    with torch.no_grad():
        reference.weight.normal_()
        reference.bias.normal_()
    ours = InstanceNorm(6, affine=True)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(3, 6, 17, 23) * 5 + 2
    for memory_format in (torch.contiguous_format, torch.channels_last):
        inputs = x.contiguous(memory_format=memory_format).requires_grad_(True)
        expected = reference(inputs)
        got = ours(inputs)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        (grad_expected,) = torch.autograd.grad(expected.square().sum(), inputs)
        (grad_got,) = torch.autograd.grad(got.square().sum(), inputs)
        torch.testing.assert_close(grad_got, grad_expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ours(x), x)  # it does normalise
    assert isinstance(UNet(UNetConfig(norm="instance")).encoder.blocks[0][1], InstanceNorm)
