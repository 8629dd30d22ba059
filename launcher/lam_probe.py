"""Linear-probe a trained LAM: do its tokens encode the true action over the window (x_t, x_{t+H})?

    python -m lavla.launcher.lam_probe --checkpoint RUN_OR_CKPT_DIR --data DATASET_DIR [--fit-split train --test-split val]

Latents of every step of the fit split train the probes; the test split (other episodes) scores
them. Reported: accuracy of the dominant signed translation axis (+x, -x, +y, -y, +z, -z) from the
one-hot token ids and from the continuous latent, against the majority-class chance level, and
the R^2 of a ridge regression from tokens / continuous latent to each summed action dimension.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lavla.data_service.episode_frames import read_episode_frames
from lavla.model.probe import (
    ProbeResult,
    RegressionResult,
    direction_labels,
    fit_logistic_probe,
    fit_ridge_probe,
    one_hot_ids,
    window_action_sums,
)


@dataclass
class EpisodeLatents:
    """LAM outputs and true motion of every step of a set of episodes."""

    ids: torch.Tensor
    """int64 [N, Q] token ids."""
    continuous: torch.Tensor
    """float [N, Q * Dl] pre-quantization latent."""
    motion: np.ndarray
    """float32 [N, A] actions summed over each step's window."""


@torch.no_grad()
def collect_latents(policy: Any, source: Any, data_cfg: Any, *, batch_size: int = 256,
                    device: torch.device | str = "cpu") -> EpisodeLatents:
    """Runs ``policy.annotate`` over every step of every episode of ``source``."""
    ids, cont, motion = [], [], []
    for i in range(source.num_episodes):
        ep = read_episode_frames(source, i, data_cfg)
        t, f = ep.pair_indices()
        for s in range(0, len(t), batch_size):
            lat = policy.annotate(ep.frames[t[s : s + batch_size]].to(device), ep.frames[f[s : s + batch_size]].to(device))
            ids.append(lat.ids.cpu())
            cont.append(lat.continuous.float().flatten(1).cpu())
        motion.append(window_action_sums(ep.actions, ep.stride))
    return EpisodeLatents(torch.cat(ids), torch.cat(cont), np.concatenate(motion))


@dataclass
class ProbeReport:
    """What :func:`probe_latents` measured."""

    tokens: ProbeResult
    """Direction classification from one-hot token ids."""
    continuous: ProbeResult
    """Direction classification from the continuous latent."""
    r2_tokens: RegressionResult
    """Ridge R^2 per action dim from one-hot token ids."""
    r2_continuous: RegressionResult
    """Ridge R^2 per action dim from the continuous latent."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name)._asdict() for f in dataclasses.fields(self)}


def probe_latents(fit: EpisodeLatents, test: EpisodeLatents, num_codes: int, *, dims: tuple[int, ...] = (0, 1, 2),
                  min_norm: float = 0.05) -> ProbeReport:
    """Direction probes on samples that moved more than ``min_norm``; R^2 probes on all samples."""
    y_fit, keep_fit = direction_labels(fit.motion, dims, min_norm)
    y_test, keep_test = direction_labels(test.motion, dims, min_norm)
    kf, kt = torch.from_numpy(keep_fit), torch.from_numpy(keep_test)
    yf, yt = torch.from_numpy(y_fit)[kf], torch.from_numpy(y_test)[kt]
    oh_fit, oh_test = one_hot_ids(fit.ids, num_codes), one_hot_ids(test.ids, num_codes)
    n_cls = 2 * len(dims)
    m_fit, m_test = torch.from_numpy(fit.motion), torch.from_numpy(test.motion)
    return ProbeReport(
        tokens=fit_logistic_probe(oh_fit[kf], yf, oh_test[kt], yt, n_cls),
        continuous=fit_logistic_probe(fit.continuous[kf], yf, test.continuous[kt], yt, n_cls),
        r2_tokens=fit_ridge_probe(oh_fit, m_fit, oh_test, m_test),
        r2_continuous=fit_ridge_probe(fit.continuous, m_fit, test.continuous, m_test),
    )


def probe_checkpoint(checkpoint: str, data: str, dataset_name: str | None = None, fit_split: str = "train",
                     test_split: str = "val") -> tuple[ProbeReport, EpisodeLatents, int]:
    """Load a LAM run / checkpoint and probe it on ``data`` (fit on ``fit_split``, scored on
    ``test_split``); returns the report, the test latents and the codebook size."""
    from lavla.data_service.config import DatasetEntry
    from lavla.data_service.sources import open_source
    from lavla.model.recipe import capabilities_of
    from lavla.trainer.export import load_checkpoint_model

    policy, cfg, ckpt = load_checkpoint_model(checkpoint)
    if not capabilities_of(policy).annotates:
        raise TypeError(f"{ckpt}: model type {type(policy).__name__} does not annotate latents; probe a LAM recipe (type: lam*)")
    name = dataset_name or Path(data).parent.name
    # the run's own entry of that name keeps its inline spec, if it has one
    base = next((e for e in cfg.data.datasets if e.name == name), DatasetEntry(name=name))
    sources = [open_source(dataclasses.replace(base, path=data, split=s), cfg.data) for s in (fit_split, test_split)]
    fit, test = (collect_latents(policy, s, cfg.data) for s in sources)
    num_codes = policy.quantizer().num_codes
    return probe_latents(fit, test, num_codes), test, num_codes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lavla.launcher.lam_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run dir or checkpoint dir of a LAM recipe")
    p.add_argument("--data", required=True, help="dataset directory (.../<name>/<version>)")
    p.add_argument("--dataset-name", default=None, help="registry name (default: the directory's parent name)")
    p.add_argument("--fit-split", default="train")
    p.add_argument("--test-split", default="val")
    a = p.parse_args(argv)
    report, _, _ = probe_checkpoint(a.checkpoint, a.data, a.dataset_name, a.fit_split, a.test_split)
    print(json.dumps(report.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
