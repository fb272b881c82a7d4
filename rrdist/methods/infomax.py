"""Deep InfoMax, local version (Hjelm et al., 2019), as the paper's baseline (appendix A.5).

alpha = 0 (no global MI term), beta = 1 (local MI), gamma = 0.1 (prior matching), Adam 1e-4.
Local MI: the global feature y of an image against every position of a local feature map of the
backbone, scored by the "encoder and dot product" critic of Hjelm et al. (a 1x1-conv MLP on the
local features, an MLP on y, dot product), with the Jensen-Shannon estimator: positives are
(y_n, c_n,ij), negatives (y_n, c_m,ij) for every other image m of the mini-batch. Prior matching:
a discriminator tells sigmoid(y) from uniform samples; the encoder fools it through a gradient
reversal, so one optimiser step trains both sides of the game.

Choices where the appendix is silent: the local map is the 8x8 map of 32x32 inputs (conv4's
second block; the last stage of the CIFAR ResNets; ResNet-34's third stage); critics of 256
units and a 256-64-1 discriminator ("reduced capacity", as the appendix says); one view per
image with the relational augmentations. Its lr defaults to the DIM paper's 1e-4 (`--lr`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from rrdist import paper
from rrdist.collective import gather, own_images, share_factor, world
from rrdist.config import PretrainConfig, setting
from rrdist.losses import local_jsd
from rrdist.methods.base import AdamSettings, Method

LOCAL_LAYER = {"conv4": "layers.1", "resnet8": "stages.2", "resnet32": "stages.2", "resnet56": "stages.2",
               "resnet18": "layer3", "resnet34": "layer3", "resnet50": "layer3"}
EMBED = 256
BETA, GAMMA = 1.0, 0.1


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


PAPER = paper.cells(
    Table_2=[(44.60, 0.27), (22.74, 0.21), (14.19, 0.13), (47.13, 0.45), (24.07, 0.05), (17.51, 0.15)],
    Table_5=[(22.74, 0.21), (32.36, 0.43), (24.07, 0.05), (33.92, 0.34)])


@dataclass
class InfoMaxSettings(AdamSettings):
    lr: float = setting(1e-4, "learning rate of Adam (the Deep InfoMax paper's 1e-4)")


class DeepInfoMax(Method):
    Settings = InfoMaxSettings
    PAPER = PAPER
    metric_names = ("loss", "prior_acc")  # prior_acc: the prior discriminator's accuracy on true prior samples

    def __init__(self, cfg: PretrainConfig, backbone: nn.Module, num_classes: int) -> None:
        super().__init__(cfg, backbone, num_classes)
        self._local: torch.Tensor | None = None
        layer = backbone.get_submodule(LOCAL_LAYER[cfg.backbone])
        layer.register_forward_hook(self._keep_local)
        channels = self._local_channels(backbone)
        d = backbone.feature_size
        self.local_critic = nn.Sequential(nn.Conv2d(channels, EMBED, 1), nn.ReLU(), nn.Conv2d(EMBED, EMBED, 1))
        self.global_critic = nn.Sequential(nn.Linear(d, EMBED), nn.ReLU(), nn.Linear(EMBED, EMBED))
        self.prior_discriminator = nn.Sequential(nn.Linear(d, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(),
                                                 nn.Linear(64, 1))

    def _keep_local(self, module, inputs, output) -> None:
        self._local = output

    def _local_channels(self, backbone: nn.Module) -> int:
        with torch.no_grad():
            was = backbone.training
            backbone.eval()
            backbone(torch.zeros(1, 3, 32, 32))
            backbone.train(was)
        return self._local.shape[1]

    def forward(self, views: torch.Tensor, labels: torch.Tensor):
        y = self.backbone(views)
        local = self._local
        local_emb = self.local_critic(local).flatten(2)  # [m, E, P]: this worker's images
        global_emb = gather(self.global_critic(y))  # [M, E]: the global batch's, negatives for every image
        start, stop = own_images(global_emb.shape[0])
        # This worker's columns of the batch's scores; times N so that DDP's mean is the whole loss.
        mi_loss = local_jsd(global_emb, local_emb, start) * world()[1]
        # The prior's samples of the whole batch, drawn alike on every worker; this worker's rows.
        M, d = global_emb.shape[0], y.shape[1]
        prior = torch.rand(M, d, generator=self.generator, device=y.device, dtype=y.dtype)[start:stop]
        real = self.prior_discriminator(prior).squeeze(1)
        fake = self.prior_discriminator(_Reverse.apply(torch.sigmoid(y))).squeeze(1)
        share = share_factor(real.shape[0])  # uneven shares: the workers' average is the global mean
        prior_loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) +
                      F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))) * share
        loss = BETA * mi_loss + GAMMA * prior_loss
        return loss, {"loss": loss.detach(), "prior_acc": (real > 0).float().mean().detach() * share}
