"""Connecting trainer ranks to Ray: attach to a cluster, or start the embedded local instance.

* ``data.ray_address`` set (multi-node): every rank attaches to that cluster as a Ray driver.
* Empty (single machine, the embedded default): the node's local leader starts a private local
  Ray instance and publishes its address in a rendezvous file; the node's other ranks read it
  after the barrier and attach. The file is keyed by the launcher's rendezvous (MASTER_ADDR/
  MASTER_PORT), so concurrent jobs on one machine never share an instance.
* Ray already initialized in this process (tests, notebooks): used as is and left running.

The leader owns the local instance, so on close it waits (bounded) until the other ranks'
drivers have detached before shutting it down; Ray's reaper removes the instance's processes
if the leader dies without closing. Attaching to a cluster with token authentication follows
Ray's rules (``RAY_AUTH_MODE=token`` and the token in ``~/.ray/auth_token`` or ``RAY_AUTH_TOKEN``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lavla.data_service.atomic import atomic_write_json
from lavla.data_service.cache import user_cache_dir
from lavla.data_service.config import DataConfig

log = logging.getLogger(__name__)

class RayUnavailableError(RuntimeError):
    """``data.num_workers > 0`` needs Ray (the ``[ray]`` extra)."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise RayUnavailableError(
            "data.num_workers > 0 decodes in Ray actors, but Ray is not installed: "
            "pip install -e '.[ray]' (or set --data.num_workers=0 to decode in the trainer process)") from e
    return ray


def job_key() -> str:
    """Identifies this training job: the same in every rank on every node."""
    parts = [os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", ""),
             os.environ.get("TORCHELASTIC_RUN_ID", "")]
    if not parts[1]:  # no launcher rendezvous: ranks started by one parent share its pid
        parts.append(str(os.getppid()))
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def rendezvous_key() -> str:
    """Identifies this training job on this host (the same in every rank of the job on this node)."""
    return hashlib.sha1(f"{job_key()}|{socket.gethostname()}".encode()).hexdigest()[:12]


def rendezvous_file(key: str | None = None) -> Path:
    return user_cache_dir() / "ray" / f"{key or rendezvous_key()}.json"


def worker_runtime_env() -> dict[str, Any]:
    """The driver's PYTHONPATH, if it has one, for the workers. ``lavla`` itself comes from the
    environment's install (editable or not) on every node, never from a checkout on sys.path."""
    path = os.environ.get("PYTHONPATH", "")
    return {"env_vars": {"PYTHONPATH": path}} if path else {}


@dataclass
class RaySession:
    """This process's Ray connection and what it must undo on close."""

    connected_here: bool
    """This process called ``ray.init`` (and so calls ``ray.shutdown``)."""
    owns_instance: bool
    """This process started the local instance (others may still be attached to it)."""
    address: str = ""
    """GCS address of the cluster."""
    session_dir: str = ""
    """The instance's session directory (names its processes; used by tests to check cleanup)."""

    def close(self, peer_timeout_s: float = 30.0) -> None:
        if not self.connected_here:
            return
        ray = import_ray()
        if not ray.is_initialized():
            return
        if self.owns_instance:
            _wait_for_other_drivers(ray, peer_timeout_s)
        ray.shutdown()
        self.connected_here = False


def _alive_other_drivers(ray: Any) -> int:
    from ray._private import state  # no public API lists drivers without the dashboard

    me = ray.get_runtime_context().get_job_id()
    return sum(1 for j in state.jobs() if not j.get("IsDead") and j.get("JobID") != me)


def _wait_for_other_drivers(ray: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    try:
        while _alive_other_drivers(ray) and time.monotonic() < deadline:
            time.sleep(0.2)
    except Exception:  # best effort: a failed probe must not block shutdown
        log.debug("could not list Ray drivers before shutdown", exc_info=True)


def _init_kwargs(cfg: DataConfig, log_to_driver: bool) -> dict[str, Any]:
    return {"namespace": cfg.ray_namespace, "log_to_driver": log_to_driver, "configure_logging": False}


def connect(cfg: DataConfig, *, is_local_leader: bool, barrier: Callable[[], None]) -> RaySession:
    """Attach this rank to Ray per ``cfg`` (collective: every rank calls it, once)."""
    ray = import_ray()
    if ray.is_initialized():
        barrier()
        return RaySession(connected_here=False, owns_instance=False, address=ray.get_runtime_context().gcs_address)
    if cfg.ray_address:
        ray.init(address=cfg.ray_address, **_init_kwargs(cfg, log_to_driver=is_local_leader))
        barrier()
        return RaySession(connected_here=True, owns_instance=False, address=ray.get_runtime_context().gcs_address)

    path = rendezvous_file()
    if is_local_leader:
        cpus = max(1, math.ceil(cfg.num_workers * cfg.worker_cpus))
        ray.init(num_cpus=cpus, include_dashboard=False, **_init_kwargs(cfg, log_to_driver=True))
        address = ray.get_runtime_context().gcs_address
        session = RaySession(connected_here=True, owns_instance=True, address=address, session_dir=_session_dir(ray))
        # Ray turns token auth on for new local instances by setting RAY_AUTH_MODE in this process
        # only, and never for explicit addresses: the other ranks need the mode to attach.
        atomic_write_json(path, {"address": address, "session_dir": session.session_dir, "pid": os.getpid(),
                                 "auth_mode": os.environ.get("RAY_AUTH_MODE")})
        log.info("started a local Ray instance at %s for %d decoder(s)", address, cfg.num_workers)
        barrier()
        return session
    barrier()
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RuntimeError(f"cannot read the local Ray rendezvous file {path} written by the node's leader rank: {e}. "
                           "Set data.ray_address to attach to a running cluster instead.") from e
    if info.get("auth_mode") and "RAY_AUTH_MODE" not in os.environ:
        _set_auth_mode(info["auth_mode"])  # the token itself is in ~/.ray on this host
    ray.init(address=info["address"], **_init_kwargs(cfg, log_to_driver=False))
    return RaySession(connected_here=True, owns_instance=False, address=info["address"],
                      session_dir=info.get("session_dir", ""))


def _set_auth_mode(mode: str) -> None:
    """What Ray does for the process that starts a local instance: env var + config refresh."""
    os.environ["RAY_AUTH_MODE"] = mode
    try:
        from ray._raylet import Config

        Config.initialize("")  # the C++ config caches the mode read at import
    except Exception:
        log.debug("could not refresh Ray's config after setting RAY_AUTH_MODE", exc_info=True)


def _session_dir(ray: Any) -> str:
    try:
        from ray._private import worker

        return str(worker._global_node.get_session_dir_path())
    except Exception:  # informational only
        return ""
