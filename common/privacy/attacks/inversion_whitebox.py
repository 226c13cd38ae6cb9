"""White-box model inversion by the server, where it holds the client segment that produced the activations it
received (the threat model's "producer": vanilla's hand-off, SplitFed's FedAvg, ...). Per client and round it
inverts the first training batch (its first 8 samples) through the segment it sent the client before that
batch, and scores the reconstructions against the clients' real inputs (MSE, PSNR, SSIM on [0, 1] images); a
PNG grid of originals above reconstructions goes into the run folder (``inversion_round<N>.png``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from slperf.common.models import build_split
from slperf.common.paradigms.threats import Seen
from slperf.common.privacy.attacks.base import Attack
from slperf.common.privacy.attacks.registry import register
from slperf.common.privacy.defenses.client import public_release
from slperf.common.privacy.inversion import InversionSettings, invert
from slperf.common.privacy.metrics import mse, psnr, ssim
from slperf.common.privacy.observations import GroundTruth, RoundLog

SAMPLES = 8


class _Public(nn.Module):
    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.transform = transform

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return self.transform(activations)


class WhiteBoxInversion(Attack):
    name = "inversion_whitebox"
    summary = "white-box inversion of the first training batch through the client segment the server holds"
    needs = frozenset({Seen.ACTIVATIONS, Seen.CLIENT_WEIGHTS})
    needs_producer = True
    activation_steps = 1
    settings = InversionSettings()

    def run(self, log: RoundLog, truth: GroundTruth) -> dict[str, dict[str, float]]:
        config = self.ctx.config
        out: dict[str, dict[str, float]] = {}
        pictures: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        for index, seen in sorted(log.clients.items()):
            if 0 not in seen.activations or seen.producer is None:
                continue
            x = truth.batches(index, log.round, [0])[0][0][:SAMPLES]
            segment = build_split(
                config.model, self.ctx.input_shape, self.ctx.num_classes, config.seed, [config.split_layer]
            )
            bottom = segment.segments[0]
            bottom.load_state_dict(seen.producer, strict=True)
            if config.defenses:  # the defenses are public: invert through their clipping as well as the bottom
                bottom = nn.Sequential(bottom, _Public(public_release(config)))
            # The data's value range (its public normalisation): pixel 0 and pixel 255 after it.
            low, high = float(x.min()), float(x.max())
            target = seen.activations[0][:SAMPLES]
            guess = invert(bottom, target, tuple(x.shape[1:]), low, high, self.settings, seed=config.seed + index)
            original, recon = (x - low) / (high - low), (guess - low) / (high - low)
            out[seen.client_id] = {
                "inversion_mse": mse(recon, original),
                "inversion_psnr": psnr(recon, original),
                "inversion_ssim": ssim(recon, original) if min(x.shape[-2:]) >= 11 else float("nan"),
            }
            pictures.append((seen.client_id, original, recon))
        if pictures and self.ctx.folder is not None:
            save_grid(self.ctx.folder / f"inversion_round{log.round}.png", pictures, log.round)
        return out


def save_grid(
    path: Path, pictures: list[tuple[str, torch.Tensor, torch.Tensor]], round: int, title: str = "white-box inversion"
) -> None:
    """Per client two rows: its originals, then the server's reconstructions of them; ``title``, round N above."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slperf.common.fsutil import atomic_write

    cols = max(len(o) for _, o, _ in pictures)
    fig, axes = plt.subplots(2 * len(pictures), cols, figsize=(1.2 * cols, 2.6 * len(pictures)), squeeze=False)
    for row, (client, original, recon) in enumerate(pictures):
        for kind, images in ((0, original), (1, recon)):
            for col in range(cols):
                ax = axes[2 * row + kind][col]
                ax.axis("off")
                if col < len(images):
                    image = images[col].clamp(0, 1).numpy()
                    ax.imshow(
                        image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1
                    )
            label = "original" if kind == 0 else "reconstructed"
            axes[2 * row + kind][0].set_title(f"{client} {label}", fontsize=7, loc="left")
    fig.suptitle(f"{title}, round {round}", fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())


register(WhiteBoxInversion)
