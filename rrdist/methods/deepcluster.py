"""DeepCluster (Caron et al., 2018) as the paper's baseline (appendix A.5).

At the start of every epoch the backbone's features of the un-augmented training images are
PCA-whitened, L2-normalised and clustered by k-means (scikit-learn, one run seeded by the run's
seed and the epoch) into 10x as many clusters as the dataset has classes; an image's cluster is
its pseudo-label for the epoch. The MLP head (256 hidden, BatchNorm, LeakyReLU) is re-initialised
at every clustering, its Adam moments dropped, as the original code re-creates its top layer.
Cross-entropy on the pseudo-labels, Adam 1e-3. The normalised mutual information between the
assignments of consecutive epochs is logged (`nmi`): it rises as the clustering settles.

Choices where the appendix is silent: one view per image with the relational augmentations (the
appendix keeps one augmentation strategy for the self-supervised baselines); PCA keeps
min(256, feature size) whitened components (the original reduces 4,096-d features to 256).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from rrdist import paper
from rrdist.collective import share_factor
from rrdist.config import PretrainConfig
from rrdist.errors import DataError
from rrdist.methods.base import Method
from rrdist.models.heads import mlp_head

CLUSTERS_PER_CLASS = 10
PCA_DIM = 256
PAPER = paper.cells(
    Table_2=[(42.88, 0.21), (21.03, 1.56), (12.60, 1.23), (43.31, 0.62), (20.44, 0.80), (11.64, 0.21)],
    Table_5=[(21.03, 1.56), (30.07, 2.06), (20.44, 0.80), (29.49, 1.36)])


def cluster(features: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Pseudo-labels [N] of features [N, D]: PCA whitening, L2 normalisation, k-means."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import normalize

    x = PCA(n_components=min(PCA_DIM, *features.shape), whiten=True, random_state=seed).fit_transform(features)
    x = normalize(x)
    return KMeans(n_clusters=k, n_init=1, random_state=seed).fit(x).labels_.astype(np.int64)


class DeepCluster(Method):
    PAPER = PAPER
    metric_names = ("loss", "cluster_acc")  # cluster_acc: views assigned to their image's cluster
    needs_indices = True

    def __init__(self, cfg: PretrainConfig, backbone: nn.Module, num_classes: int) -> None:
        super().__init__(cfg, backbone, num_classes)
        self.clusters = CLUSTERS_PER_CLASS * num_classes
        self.head = mlp_head(backbone.feature_size, self.clusters)
        self.pseudo_labels: torch.Tensor | None = None  # [N] by training-image index, for this epoch
        self.nmi = float("nan")

    @classmethod
    def check_data(cls, cfg: PretrainConfig, manifest: dict) -> None:
        clusters = CLUSTERS_PER_CLASS * manifest["num_classes"]
        count = manifest["splits"][manifest.get("pretrain_split", "train")]["n"]
        if count < clusters:
            raise DataError(f"DeepCluster makes {clusters} clusters ({CLUSTERS_PER_CLASS} per class) but the "
                            f"training split has {count} images: use a larger dataset")

    def get_extra_state(self) -> dict:
        """The epoch's pseudo-labels and the last NMI go into checkpoints: a resume inside an epoch
        trains on the clustering that epoch began with."""
        return {"pseudo_labels": self.pseudo_labels, "nmi": self.nmi}

    def set_extra_state(self, state: dict) -> None:
        self.pseudo_labels, self.nmi = state["pseudo_labels"], float(state["nmi"])

    def on_epoch_start(self, epoch: int, optimizer: torch.optim.Optimizer, images=None, resumed: bool = False) -> None:
        from sklearn.metrics import normalized_mutual_info_score

        if resumed and self.pseudo_labels is not None:
            return  # the clustering and head of this epoch's start came with the checkpoint
        if images is None:
            raise RuntimeError("DeepCluster clusters the training images at every epoch: pass them")
        device = next(self.parameters()).device
        distributed = dist.is_available() and dist.is_initialized()
        if not distributed or dist.get_rank() == 0:  # one clustering, shared: every rank uses the same labels
            features = images.features(self.backbone).double().numpy()
            labels = torch.from_numpy(cluster(features, self.clusters, self.cfg.seed * 1000 + epoch)).to(device)
        else:
            labels = torch.zeros(images.count, dtype=torch.int64, device=device)
        if distributed:
            dist.broadcast(labels, 0)
        if self.pseudo_labels is not None:
            self.nmi = float(normalized_mutual_info_score(self.pseudo_labels.cpu().numpy(), labels.cpu().numpy()))
        self.pseudo_labels = labels
        for module in self.head.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        for p in self.head.parameters():
            optimizer.state.pop(p, None)

    def epoch_metrics(self) -> dict[str, float]:
        return {} if np.isnan(self.nmi) else {"nmi": self.nmi}  # from the second clustering on

    def targets(self, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        if self.pseudo_labels.device != indices.device:  # restored from a checkpoint onto the CPU
            self.pseudo_labels = self.pseudo_labels.to(indices.device)
        return self.pseudo_labels[indices]

    def forward(self, views: torch.Tensor, labels: torch.Tensor):
        logits = self.head(self.backbone(views))
        share = share_factor(labels.shape[0])  # uneven shares: the workers' average is the global mean
        loss = F.cross_entropy(logits, labels) * share
        acc = (logits.argmax(dim=1) == labels).float().mean() * share
        return loss, {"loss": loss.detach(), "cluster_acc": acc.detach()}
