# --- Training: one DeepSpeed launcher per node (--no_ssh --node_rank), each starting
# GPUS_PER_NODE ranks. `trap ''` makes the launchers ignore USR1 and TERM: the step's signals
# reach every process of it, and a launcher killed by one would take the checkpointing
# trainers with it; the trainers install their own handlers. --wait instead of
# --kill-on-bad-exit: nodes leaving with EXIT_PREEMPTED must not be killed (and their code
# turned into 137) by the first one to leave; a node that crashed still brings the step down
# within two minutes instead of leaving the others blocked in a collective.
TRAIN_ARGS=(
{{train_args}}
)
run_training() {
    srun --nodes="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=0 --wait=120 "${CONTAINER_ARGS[@]}" \
        bash -c 'trap "" USR1 TERM; exec deepspeed --node_rank="$SLURM_NODEID" "$@"' lavla-node \
        --no_ssh --hostfile="$HOSTFILE" --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
        "${TRAIN_ARGS[@]}" "${DATA_ARGS[@]}" &
