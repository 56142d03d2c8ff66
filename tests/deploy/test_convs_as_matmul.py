"""The MatMul forms of 1-D convolutions compute what the convolutions do."""
import pytest
import torch
from torch import nn

from cadence.deploy.convs_as_matmul import Conv1dMatMul, ConvTranspose1dMatMul, convs_as_matmul
from tests.deploy.onnx_cases import make_policy


@pytest.mark.parametrize("kernel,stride,padding,bias", [(5, 1, 2, True), (3, 2, 1, True), (1, 1, 0, False),
                                                        (4, 1, 0, True)])
def test_conv1d_as_matmul_equals_conv1d(kernel, stride, padding, bias):
    torch.manual_seed(0)
    conv = nn.Conv1d(6, 7, kernel, stride=stride, padding=padding, bias=bias)
    x = torch.randn(3, 6, 16)
    assert torch.allclose(Conv1dMatMul(conv)(x), conv(x), atol=1e-5)


@pytest.mark.parametrize("kernel,stride,padding", [(4, 2, 1), (3, 1, 1), (5, 3, 2), (2, 2, 0)])
def test_conv_transpose1d_as_matmul_equals_conv_transpose1d(kernel, stride, padding):
    torch.manual_seed(0)
    conv = nn.ConvTranspose1d(6, 5, kernel, stride=stride, padding=padding)
    x = torch.randn(2, 6, 8)
    want = conv(x)
    got = ConvTranspose1dMatMul(conv)(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5)


def test_unsupported_convolutions_are_refused():
    with pytest.raises(ValueError, match="groups|ungrouped"):
        Conv1dMatMul(nn.Conv1d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="output padding"):
        ConvTranspose1dMatMul(nn.ConvTranspose1d(4, 4, 3, stride=2, output_padding=1))


def test_a_unet_with_matmul_convolutions_is_the_same_function():
    policy = make_policy("ddpm", down_dims=[16, 32])
    net = convs_as_matmul(policy.denoiser)
    assert not any(isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)) for m in net.modules())
    assert any(isinstance(m, nn.Conv1d) for m in policy.denoiser.modules())     # the original is untouched
    gen = torch.Generator().manual_seed(0)
    x, level = torch.randn(2, 16, 2, generator=gen), torch.tensor([90.0, 3.0])
    cond = torch.randn(2, policy.denoiser.down[0][0].film[1].in_features - 16, generator=gen)
    with torch.no_grad():
        assert torch.allclose(net(x, level, cond), policy.denoiser(x, level, cond), atol=1e-5)
