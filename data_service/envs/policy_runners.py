"""A loaded policy as a closed-loop controller, and the random floor it must beat: what ``envs.sim_env.rollout``
calls each step (obs -> raw action chunk float32 [N, D]).

``policy`` is a loaded export (``model.policy_io.LoadedPolicy``); each observation becomes a batch
exactly as the training pipeline builds one (``sampling.observation``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from lavla.data_service.sampling.observation import dataset_ids, observation_batch


class PolicyRunner:
    """A loaded policy as a ``rollout`` policy: obs -> raw action chunk float32 [N, D].

    ``reset(seed)`` (called by ``rollout`` at each episode start) reseeds the sampling noise
    (flow matching), so each episode is reproducible on its own."""

    def __init__(self, policy: Any, dataset_name: str, *, image_encodings: dict[str, str] | None = None,
                 num_steps: int | None = None, seed: int = 0) -> None:
        import torch

        self.policy, self.dataset_name = policy, dataset_name
        self.image_encodings = dict(image_encodings or {})
        self.num_steps = num_steps
        self.generator = torch.Generator(device=policy.device)
        self.generator.manual_seed(seed)
        self.calls, self.seconds = 0, 0.0
        dataset_ids(policy, dataset_name)  # fail now, not mid-rollout
        policy.normalizer(dataset_name)

    def reset(self, seed: int) -> None:
        self.generator.manual_seed(int(seed))

    def __call__(self, obs: dict[str, Any]) -> np.ndarray:
        t0 = time.perf_counter()
        batch = observation_batch(obs, self.policy, self.dataset_name, image_encodings=self.image_encodings)
        kwargs: dict[str, Any] = {"generator": self.generator}
        if self.num_steps is not None:
            kwargs["num_steps"] = self.num_steps
        normalized = self.policy.predict_action(batch, **kwargs)
        raw = self.policy.unnormalize_action(normalized[0].float().cpu().numpy(), self.dataset_name)
        self.calls += 1
        self.seconds += time.perf_counter() - t0
        return np.asarray(raw, np.float32)


class RandomActionRunner:
    """The random floor: uniform actions over the policy's normalized range ([-1, 1] per dim, so the
    box the dataset's actions span), unnormalized like the policy's own, one chunk of the policy's
    horizon per call. What a success rate must beat to show the policy does anything."""

    def __init__(self, policy: Any, dataset_name: str, seed: int = 0) -> None:
        self.policy, self.dataset_name = policy, dataset_name
        self.horizon, self.dim = int(policy.data_cfg.action_horizon), int(policy.action_dim(dataset_name))
        self.rng = np.random.default_rng(seed)

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng([int(seed), 1])

    def __call__(self, obs: dict[str, Any]) -> np.ndarray:
        normalized = self.rng.uniform(-1.0, 1.0, (self.horizon, self.dim)).astype(np.float32)
        return np.asarray(self.policy.unnormalize_action(normalized, self.dataset_name), np.float32)
