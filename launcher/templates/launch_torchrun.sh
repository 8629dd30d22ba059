# --- Training, elastic: one torchrun agent per node, all meeting in a c10d rendezvous on the
# first node (which must survive: it hosts the rendezvous store). --no-kill here and in the
# directives keep the job and this step alive when a node fails: the agents on the other nodes
# see their trainers fail in a collective, meet again without it (at least MIN_NODES) and restart
# the trainers, which resume from the newest checkpoint at the new world size. Agents of another
# allocation can join the same rendezvous (the command is logged below); the running agents stop
# their trainers with SIGTERM (they checkpoint the step they are in) and restart them with the
# newcomers. `trap ''` keeps USR1/TERM from the agents (the trainers handle them); under torchrun
# a trainer that saved after a signal exits 0 so the agent does not restart it.
# Each rendezvous round must publish its master address: with torch's shared rendezvous store, a
# rank 0 that stays across rounds does not, and agents joining later time out (torch 2.13).
export {{agent_env}}
TRAIN_ARGS=(
{{train_args}}
)
ELASTIC_ARGS=(
    --nnodes="$MIN_NODES:{{nodes}}" --nproc-per-node="$GPUS_PER_NODE" --max-restarts={{max_restarts}}
    --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="lavla-$SLURM_JOB_ID"
)
log "elastic job: $NNODES node(s) now, $MIN_NODES to {{nodes}}. To add nodes from another allocation, run there:"
log "  {{agent_env}} srun --ntasks-per-node=1 torchrun ${ELASTIC_ARGS[*]} ${TRAIN_ARGS[*]}"
run_training() {
    srun --nodes="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=0 --no-kill "${CONTAINER_ARGS[@]}" \
        bash -c 'trap "" USR1 TERM; exec torchrun "$@"' lavla-node \
        "${ELASTIC_ARGS[@]}" "${TRAIN_ARGS[@]}" "${DATA_ARGS[@]}" &
