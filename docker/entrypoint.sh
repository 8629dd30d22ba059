#!/usr/bin/env bash
# Entry point of the training image: load site settings, then become the given command.
#
#   docker run IMAGE deepspeed launcher/pretrain.py --config configs/quickstart.yaml
#   docker run IMAGE ray start --head --block --port 6379
#   docker run IMAGE python -m lavla.launcher.ray_job --config ... --address HEAD:6379
#
# Site settings (NCCL interfaces, proxies, wandb keys...) come from shell files mounted into
# /etc/lavla/env.d/*.sh and from $LAVLA_ENV_FILE; nothing here is specific to one launcher.
# pyxis runs steps without the entrypoint unless asked (srun --container-entrypoint); the image's
# ENV alone is enough to train, these files are for site settings.
set -euo pipefail

for f in /etc/lavla/env.d/*.sh ${LAVLA_ENV_FILE:+"$LAVLA_ENV_FILE"}; do
    if [[ -f $f ]]; then
        set +u  # site files are plain shell, not written for nounset
        # shellcheck source=/dev/null
        source "$f"
        set -u
    elif [[ $f == "${LAVLA_ENV_FILE:-}" ]]; then
        echo "lavla-entrypoint: LAVLA_ENV_FILE=$f does not exist" >&2
        exit 2
    fi
done

if (( $# == 0 )); then
    echo "usage: IMAGE <command> [args...]   e.g. deepspeed launcher/pretrain.py --config configs/quickstart.yaml" >&2
    exit 2
fi
exec "$@"
