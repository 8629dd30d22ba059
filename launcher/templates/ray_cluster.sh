
# --- Ray data service on the allocation (data.num_workers > 0): a head on the first node and
# a worker on every other node; decoders need CPUs only (--num-gpus=0). The steps overlap the
# training step's resources, and ignore USR1 so a preemption notice cannot kill the service
# under trainers that still read from it.
RAY_PORT={{ray_port}}
RAY_HEAD="$MASTER_ADDR:$RAY_PORT"
# Ray turns token auth on for a head that finds ~/.ray/auth_token and for no one else, so pick
# the mode for every process of the job, with a token private to the job (on the shared run dir).
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$SLURM_DIR/ray-token-$SLURM_JOB_ID"
( umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$RAY_AUTH_TOKEN_PATH" )
RAY_ARGS=(--block --num-cpus={{ray_cpus_per_node}} --num-gpus=0 --disable-usage-stats --temp-dir="/tmp/lavla-ray-$SLURM_JOB_ID"{{ray_start_args}})
srun --overlap --nodes=1 --ntasks=1 --nodelist="${NODES[0]}" "${CONTAINER_ARGS[@]}" \
    bash -c 'trap "" USR1; exec "$@"' lavla-ray \
    ray start --head --port="$RAY_PORT" --include-dashboard=false "${RAY_ARGS[@]}" &
BACKGROUND_PIDS+=($!)
if (( NNODES > 1 )); then
    srun --overlap --nodes=$((NNODES - 1)) --ntasks-per-node=1 --exclude="${NODES[0]}" "${CONTAINER_ARGS[@]}" \
        bash -c 'trap "" USR1; exec "$@"' lavla-ray \
        ray start --address="$RAY_HEAD" "${RAY_ARGS[@]}" &
    BACKGROUND_PIDS+=($!)
fi
# Trainers attach as Ray drivers: wait for the head (workers join on their own; decoders that
# do not fit on the head wait for them).
if ! srun --overlap --nodes=1 --ntasks=1 --nodelist="${NODES[0]}" "${CONTAINER_ARGS[@]}" \
    bash -c 'for _ in $(seq 120); do ray status --address="$1" >/dev/null 2>&1 && exit 0; sleep 2; done; exit 1' \
    lavla-ray-wait "$RAY_HEAD"; then
    log "the Ray head at $RAY_HEAD did not come up within 4 minutes"
    for pid in "${BACKGROUND_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    exit 1
fi
log "Ray data service cluster up at $RAY_HEAD"
DATA_ARGS=(--data.ray_address="$RAY_HEAD")
