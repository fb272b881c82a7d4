import pytest
import torch

from rrdist.errors import ConfigError
from rrdist.models import BACKBONES, build_backbone


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,dim", [("conv4", 64), ("resnet8", 64), ("resnet32", 64), ("resnet56", 64),
                                      ("resnet34", 512), ("resnet18", 512), ("resnet50", 2048)])
def test_backbone_feature_size(name, dim):
    model = build_backbone(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, dim)
    assert model.feature_size == dim


def test_parameter_counts_match_the_paper():
    assert count(build_backbone("resnet32")) == pytest.approx(0.47e6, rel=0.02)  # appendix A.2
    assert count(build_backbone("resnet34")) == pytest.approx(21.3e6, rel=0.01)
    assert count(build_backbone("resnet8")) < count(build_backbone("resnet32")) < count(build_backbone("resnet56"))


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_imagenet_resnets_are_torchvisions_without_the_classifier(name):
    """The ImageNet stem (7x7 stride-2 convolution, max-pool), the same modules and parameters as
    torchvision's model of that name, less its fc layer; 224 px inputs give one feature vector."""
    import torchvision.models

    reference = getattr(torchvision.models, name)(weights=None)
    model = build_backbone(name)
    assert count(model) == count(reference) - count(reference.fc)
    assert (model.conv1.kernel_size, model.conv1.stride) == ((7, 7), (2, 2)) and isinstance(model.maxpool, torch.nn.MaxPool2d)
    mine = {k: v.shape for k, v in model.state_dict().items()}
    theirs = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert mine == theirs
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 224, 224)).shape == (1, model.feature_size)


def test_conv4_layout():
    convs = [m for m in build_backbone("conv4").modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)


def test_unknown_backbone():
    with pytest.raises(ConfigError, match="unknown backbone 'vgg'"):
        build_backbone("vgg")
    assert "vgg" not in BACKBONES


def test_compiled_backbone_keeps_its_parameter_names_and_outputs():
    """--compile compiles the backbone in place: checkpoints keep their keys, outputs stay the same."""
    from rrdist.models import build_backbone

    torch.manual_seed(0)
    net = build_backbone("conv4").eval()
    x = torch.randn(4, 3, 32, 32)
    keys = list(net.state_dict())
    want = net(x)
    net.compile()
    assert list(net.state_dict()) == keys
    got = net(x)
    assert torch.allclose(got, want, atol=1e-5)
