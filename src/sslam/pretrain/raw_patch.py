"""The math the raw-patch objectives share (SSAST's joint discriminative / generative masked patch modelling,
also SSAMBA's, in ``objectives/ssast.py``; the overview's masked-spectrogram MSE in ``objectives/msm.py``): the
masks (:func:`cluster_mask`, :func:`random_mask`), the raw patch targets (:func:`raw_patches`, from the same
normalised log-mel the encoder reads) and the losses (:func:`info_nce`, :func:`patch_mse`). The objectives
reach the encoder only through its contract (masked tokens kept in the sequence with the mask embedding,
:func:`require_mask_tokens`); their heads are in ``models/heads.py``.
"""

from __future__ import annotations

import torch

from sslam.models.contract import PatchEncoder


def raw_patches(x: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """(B, frames, mel) normalised log-mel -> (B, N, pt * pf) raw patch targets, in the encoders' token
    order (time-major, as the patch conv flattens its output), each patch flattened time-major too."""
    b, frames, mel = x.shape
    pt, pf = patch
    gt, gf = frames // pt, mel // pf
    x = x[:, : gt * pt, : gf * pf].reshape(b, gt, pt, gf, pf)
    return x.permute(0, 1, 3, 2, 4).reshape(b, gt * gf, pt * pf)


def cluster_mask(
    num_masks: int,
    grid: tuple[int, int],
    count: int,
    cluster_sizes: tuple[int, ...] = (3, 4, 5),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SSAST's cluster masking: (num_masks, T' * F') bool, True = masked, exactly ``count`` per row.

    Per mask: draw a cluster size c from ``cluster_sizes`` and a random start patch, mask the c x c patches
    from it (those off the grid skipped: clusters never wrap across a grid edge), repeat until ``count`` are
    masked; the last cluster is trimmed in its drawing order (the reference keeps the first ``count``)."""
    gt, gf = grid
    n = gt * gf
    if not 0 < count <= n:
        raise ValueError(f"mask count must be in 1..{n} (the patch grid {gt}x{gf}), got {count}")
    masked = torch.zeros(num_masks, n, dtype=torch.bool)
    for row in range(num_masks):
        chosen: list[int] = []
        seen = masked[row]
        while len(chosen) < count:
            c = cluster_sizes[int(torch.randint(len(cluster_sizes), (1,), generator=generator))]
            start = int(torch.randint(n, (1,), generator=generator))
            t0, f0 = divmod(start, gf)
            for t in range(t0, min(t0 + c, gt)):
                for f in range(f0, min(f0 + c, gf)):
                    i = t * gf + f
                    if not seen[i] and len(chosen) < count:
                        seen[i] = True
                        chosen.append(i)
    return masked


def random_mask(
    num_masks: int, num_patches: int, ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Unstructured masking (the overview): (num_masks, N) bool, exactly int(N * ratio) masked per row, a
    uniformly random subset."""
    count = int(num_patches * ratio)
    order = torch.rand(num_masks, num_patches, generator=generator).argsort(dim=1)
    return torch.zeros(num_masks, num_patches, dtype=torch.bool).scatter(1, order[:, :count], True)


def info_nce(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SSAST's discriminative loss over each clip's masked patches: pred, target (B, M, P) ->
    (loss, accuracy).

    Scores s_ij = target_i . pred_j within a clip; the loss is -mean_i log softmax_j(s_i.)_i (the other
    masked patches of the same clip are the negatives); the accuracy is the share of predictions j whose
    own target scores highest among the clip's targets (argmax_i s_ij = j), as the reference logs it."""
    scores = target.float() @ pred.float().transpose(1, 2)  # (B, M_target, M_pred)
    loss = -torch.diagonal(torch.log_softmax(scores, dim=-1), dim1=1, dim2=2).mean()
    own = torch.arange(scores.shape[1], device=scores.device)
    accuracy = (scores.argmax(dim=1) == own).float().mean()
    return loss, accuracy.detach()


def patch_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSAST's generative loss (and the overview's MSM loss): the mean squared error over every element of
    the chosen patches, pred and target (..., P)."""
    return (pred.float() - target.float()).pow(2).mean()


def require_mask_tokens(encoder: PatchEncoder, objective: str) -> None:
    """The raw-patch objectives read the encoder's outputs at the masked positions: a ``drop`` encoder has none."""
    if encoder.masked_tokens != "mask_token":
        raise ValueError(
            f"pretrain.objective {objective} predicts the masked patches from the encoder's outputs there: it "
            f"needs model.masked_tokens mask_token (or auto), got {encoder.masked_tokens!r}"
        )
