"""Exit codes of ``launcher/pretrain.py`` that the cluster launchers act on.

DeepSpeed's launcher passes a rank's non-zero exit code through (``launch.py`` exits with it,
``runner.py`` too), and ``srun`` returns the largest code of its tasks, so a code chosen by the
trainer reaches the SLURM batch script unchanged.
"""

EXIT_OK = 0
"""Training reached ``trainer.max_steps`` (or finished for another normal reason)."""
EXIT_CONFIG_ERROR = 2
"""The config could not be loaded, or the job could not start (its rendezvous port is taken);
nothing ran. Requeueing would fail the same way."""
EXIT_NONFINITE = 3
"""Training stopped on too many consecutive non-finite steps (``NonFiniteLossError``): a
diagnosis, not a crash; restarting from the last checkpoint would most likely hit it again."""
EXIT_PREEMPTED = 75
"""A SIGUSR1/SIGTERM made the trainer checkpoint and stop early (EX_TEMPFAIL: "try again").
The SLURM script requeues the job on it; ``--resume=auto`` continues from that checkpoint."""
